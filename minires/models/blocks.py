"""Residual blocks: the building units of every ResNet in :mod:`minires.models`.

A residual block computes ``y = relu(F(x) + shortcut(x))``: a small stack of convolutions ``F``
(the *residual branch*) plus a *shortcut* that is the identity when the shape is unchanged and a
projection (or, in He et al.'s CIFAR nets, a parameter-free subsample-and-zero-pad) when it is not.

Every block here is written the same way, so a reader (or a tool) can find the parts by name::

    def forward(self, x):
        identity = self.shortcut(x)        # x, or self.downsample(x)
        out = self.branch(x)               # F(x): conv-bn-relu-conv-bn (or the bottleneck's three)
        out = self.add(out, identity)      # the residual add, a hookable module (absent when plain)
        return self.relu(out)

**The hookable residual add.** ``block.add`` is a :class:`ResidualAdd`, a parameter-free module whose
``forward(branch, identity)`` returns ``branch + identity``. A forward hook on it sees both operands and
the sum -- ``hook(module, (branch_out, identity), summed)`` -- so skip-connection probes can compare
the branch with the identity, measure ``|F(x)| / |x|``, or register tensor hooks on either operand to
read the gradient each path carries. ``block.branch(x)`` and ``block.shortcut(x)`` are ordinary methods,
so the two paths can also be run on their own. With ``plain=True`` a block has no shortcut at all:
``add`` and ``downsample`` are ``None`` and ``forward`` is ``relu(branch(x))``.

**Fused BatchNorm ops.** Each BN + ReLU pair runs as one op (``BatchNorm2d.forward_relu``, via
:func:`norm_relu`) and a post-activation block's tail ``relu(bn(out) + identity)`` as another
(``BatchNorm2d.forward_add_relu``): fewer passes over the activations and nothing kept for the ReLU but its
output, with the same values, gradients and running statistics. That happens only while no hook watches
the layers a fused op stands in for (a hook sees exactly what the separate modules give) and while fast
kernels are on (``minires.ops.cuda.fast_kernels_off()`` runs the separate modules everywhere).

Attribute names follow torchvision (``conv1``, ``bn1``, ``relu``, ``conv2``, ``bn2``, ``conv3``,
``bn3``, ``downsample``), so state_dict keys match torchvision's and its weights load unchanged. The
stride sits on the 3x3 convolution, as in torchvision's current ("v1.5") ResNet.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

import minires.nn as nn
import minires.nn.functional as F
from minires.nn.modules.batchnorm import _BatchNorm
from minires.ops import pad
from minires.ops.cuda import fast_kernels_enabled, use_fast_kernels
from minires.tensor import Tensor

NormLayer = Callable[[int], nn.Module]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm follows, so a bias would be redundant)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias: mixes channels, and with ``stride`` subsamples the grid."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def projection_shortcut(in_planes: int, out_planes: int, stride: int, norm_layer: NormLayer | None = None) -> nn.Sequential:
    """torchvision's ``downsample``: 1x1 conv (with stride) + BatchNorm, for when a block changes shape.

    An ``nn.Sequential`` so its state_dict keys read ``downsample.0.weight``, ``downsample.1.running_mean``.
    """
    norm_layer = norm_layer or nn.BatchNorm2d
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), norm_layer(out_planes))


class ResidualAdd(nn.Module):
    """``branch + identity``: the residual add, as a module so forward hooks can watch it.

    A forward hook receives ``(module, (branch_out, identity), summed)``. It has no parameters and adds
    nothing to the state_dict.
    """

    def forward(self, branch: Tensor, identity: Tensor) -> Tensor:
        self.check_shapes(branch, identity)
        return branch + identity

    @staticmethod
    def check_shapes(branch: Tensor, identity: Tensor) -> None:
        """The two operands must have one shape (a mismatch means the block lacks its downsample)."""
        if branch.shape != identity.shape:
            raise ValueError(
                f"ResidualAdd: residual branch output {branch.shape} and shortcut {identity.shape} differ in shape; "
                "a block that changes channels or stride needs a downsample (projection) shortcut"
            )


class OptionAShortcut(nn.Module):
    """He et al. (2015)'s parameter-free "option A" shortcut for the CIFAR ResNets.

    Subsamples the grid by taking every ``stride``-th pixel (``x[:, :, ::stride, ::stride]``) and appends
    ``out_planes - in_planes`` all-zero channels, so the identity path carries no weights at all:
    ``(N, in_planes, H, W) -> (N, out_planes, ceil(H / stride), ceil(W / stride))``.
    Where the zero channels go (``padding``): ``"end"`` (default) puts them after the real ones, as in the
    authors' Torch code (``nn.Concat`` of the input and a zeroed copy); ``"split"`` puts half before and half
    after (the extra odd one after), as the widely copied PyTorch CIFAR code does
    (``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))``, akamaster/pytorch_resnet_cifar10).
    The choice changes which branch channels the identity adds to, so weights trained with one give
    other logits with the other.
    """

    PADDINGS = ("end", "split")

    def __init__(self, in_planes: int, out_planes: int, stride: int = 2, padding: str = "end") -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError(f"OptionAShortcut: cannot shrink channels ({in_planes} -> {out_planes}) by zero padding")
        if padding not in self.PADDINGS:
            raise ValueError(f"OptionAShortcut: padding must be 'end' or 'split', got {padding!r}")
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.stride = stride
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_planes - self.in_planes
        if extra:
            front = extra // 2 if self.padding == "split" else 0
            x = pad(x, (0, 0, 0, 0, front, extra - front))  # (W left/right, H top/bottom, C front/back)
        return x

    def extra_repr(self) -> str:
        return f"{self.in_planes}, {self.out_planes}, stride={self.stride}" + (", padding='split'" if self.padding == "split" else "")


def fusion_pays(x: Tensor) -> bool:
    """Whether fused BN ops should run on x's arrays: on NumPy while fast kernels are enabled (their
    passes are :mod:`minires.ops.batch_norm_cpu`'s), on a GPU where its fast BN kernel passed its self-check."""
    if isinstance(x.data, np.ndarray):
        return fast_kernels_enabled()
    return use_fast_kernels(x.data, "batch_norm")


def unwatched(*modules: nn.Module | None) -> bool:
    """True when none of the modules has forward, forward-pre or full backward hooks: a fused op may then
    stand in for them (hooks must see exactly the tensors the separate modules give)."""
    return not any(m._forward_hooks or m._forward_pre_hooks or m.__dict__.get("_backward_hooks") for m in modules if m is not None)


def norm_relu(norm: nn.Module, relu: nn.Module, x: Tensor) -> Tensor:
    """``relu(norm(x))``: as one fused op (``BatchNorm2d.forward_relu``) when ``norm`` is a plain
    ``BatchNorm2d``, ``relu`` a plain ``nn.ReLU``, no hooks watch either and :func:`fusion_pays`; else the
    two modules in turn. Both give the same values, gradients and running statistics."""
    if type(norm) is nn.BatchNorm2d and type(relu) is nn.ReLU and unwatched(norm, relu) and fusion_pays(x):
        return norm.forward_relu(x)
    return relu(norm(x))


class _ResidualBlock(nn.Module):
    """What every block shares: the shortcut, the hookable add and ``forward``.

    Subclasses define ``branch(x)`` (the residual function F) and set ``downsample`` (None for the
    identity), ``add`` (None when plain) and ``relu``.
    """

    expansion: int = 1
    preact: bool = False
    downsample: nn.Module | None
    add: ResidualAdd | None
    relu: nn.ReLU

    def _init_shortcut(self, downsample: nn.Module | None, plain: bool) -> None:
        self.plain = plain
        self.downsample = None if plain else downsample
        self.add = None if plain else ResidualAdd()

    def branch(self, x: Tensor) -> Tensor:
        """The residual function F(x) (defined by each block)."""
        raise NotImplementedError

    def shortcut(self, x: Tensor) -> Tensor:
        """The identity path: ``x`` itself, or ``downsample(x)`` when the block changes shape."""
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: Tensor) -> Tensor:
        if self._fused_tail(x):  # last BN + add + ReLU as one op (one pass over the data), same result
            out, identity = self._branch_before_last_norm(x), self.shortcut(x)
            ResidualAdd.check_shapes(out, identity)
            return self._last_norm().forward_add_relu(out, identity)
        out = self.branch(x)
        if self.add is None:  # plain: no skip connection
            return self.relu(out)
        identity = self.shortcut(x)
        out = self.add(out, identity)
        return self.relu(out)

    def _last_norm(self) -> nn.Module:
        """The norm layer that ends the branch (defined by each block)."""
        raise NotImplementedError

    def _branch_before_last_norm(self, x: Tensor) -> Tensor:
        """The branch up to (not including) its last norm layer (defined by each block)."""
        raise NotImplementedError

    def _fused_tail(self, x: Tensor) -> bool:
        """Whether ``relu(last_norm(...) + shortcut)`` may run as one fused op: where :func:`fusion_pays`, for
        a skip block whose last norm is a plain ``BatchNorm2d`` and ReLU a plain ``nn.ReLU``, and only while
        no hooks watch those layers or the add (hooks see exactly what the unfused path gives)."""
        if self.add is None or not fusion_pays(x):
            return False
        norm = self._last_norm()
        if type(norm) is not nn.BatchNorm2d or type(self.relu) is not nn.ReLU:
            return False
        return unwatched(norm, self.add, self.relu)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    ``(N, inplanes, H, W) -> (N, planes, H / stride, W / stride)``; used by resnet18/34 and the CIFAR nets.
    ``downsample`` is the shortcut module when the shape changes (``projection_shortcut`` or
    ``OptionAShortcut``), None for the identity. ``plain=True`` drops the shortcut (and ``downsample``).
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        norm_layer: NormLayer | None = None,
        plain: bool = False,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock: only groups=1 and base_width=64 are supported (as in torchvision)")
        norm_layer = norm_layer or nn.BatchNorm2d
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self._init_shortcut(downsample, plain)
        self.stride = stride

    def branch(self, x: Tensor) -> Tensor:
        return self.bn2(self._branch_before_last_norm(x))

    def _branch_before_last_norm(self, x: Tensor) -> Tensor:
        return self.conv2(norm_relu(self.bn1, self.relu, self.conv1(x)))

    def _last_norm(self) -> nn.Module:
        return self.bn2

    def zero_init_last(self) -> None:
        """Start the block as (almost) the identity: zero the last BatchNorm's scale, so F(x) = 0."""
        nn.init.zeros_(self.bn2.weight)


class Bottleneck(_ResidualBlock):
    """1x1 (reduce) -> 3x3 (with the stride) -> 1x1 (expand by 4), each followed by BatchNorm.

    ``(N, inplanes, H, W) -> (N, planes * 4, H / stride, W / stride)``; used by resnet50/101/152. The
    inner width is ``planes * base_width / 64 * groups`` (``planes`` for plain ResNets; wider for
    wide ResNets and ResNeXt, as in torchvision).
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        norm_layer: NormLayer | None = None,
        plain: bool = False,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU()
        self._init_shortcut(downsample, plain)
        self.stride = stride

    def branch(self, x: Tensor) -> Tensor:
        return self.bn3(self._branch_before_last_norm(x))

    def _branch_before_last_norm(self, x: Tensor) -> Tensor:
        out = norm_relu(self.bn1, self.relu, self.conv1(x))
        return self.conv3(norm_relu(self.bn2, self.relu, self.conv2(out)))

    def _last_norm(self) -> nn.Module:
        return self.bn3

    def zero_init_last(self) -> None:
        """Start the block as (almost) the identity: zero the last BatchNorm's scale, so F(x) = 0."""
        nn.init.zeros_(self.bn3.weight)


def _without_stats_update(norm: nn.Module, x: Tensor) -> Tensor:
    """``norm(x)`` with the same result, but a BatchNorm in training leaves its running statistics and
    ``num_batches_tracked`` as they are (it normalises with the batch's own statistics either way)."""
    if isinstance(norm, _BatchNorm) and norm.training:
        return F.batch_norm(x, None, None, norm.weight, norm.bias, training=True, eps=norm.eps)
    return norm(x)


class _PreActBlock(_ResidualBlock):
    """Pre-activation ordering (He et al. 2016, "Identity Mappings in Deep Residual Networks").

    BN and ReLU move *before* each convolution and nothing follows the add, so the identity path is
    a clean ``x -> x + F(x) -> ...`` from block to block: ``forward = add(branch(x), shortcut(x))``.
    When the block changes shape, the projection shortcut reads the pre-activated input
    ``relu(bn1(x))`` (as in the paper's code), and is a bare 1x1 conv (no BatchNorm). A network of
    these blocks needs one extra BN + ReLU after its last block (``ResNet``/``CifarResNet`` add it as
    ``final_bn``).
    """

    preact = True
    bn1: nn.BatchNorm2d

    def _branch_from(self, pre: Tensor) -> Tensor:
        raise NotImplementedError

    def branch(self, x: Tensor) -> Tensor:
        return self._branch_from(norm_relu(self.bn1, self.relu, x))

    def forward(self, x: Tensor) -> Tensor:
        pre = norm_relu(self.bn1, self.relu, x)
        out = self._branch_from(pre)
        if self.add is None:
            return out
        # A projection sees the pre-activated input; the identity sees x itself.
        identity = x if self.downsample is None else self.downsample(pre)
        return self.add(out, identity)

    def shortcut(self, x: Tensor) -> Tensor:
        """``x``, or the projection of ``relu(bn1(x))``. bn1 here leaves its running statistics alone:
        ``forward`` and ``branch`` update them, and calling this on its own must not do so a second time."""
        return x if self.downsample is None else self.downsample(self.relu(_without_stats_update(self.bn1, x)))


class PreActBasicBlock(_PreActBlock):
    """``x + conv2(relu(bn2(conv1(relu(bn1(x))))))``: the pre-activation BasicBlock.

    Same attribute names and parameter shapes as :class:`BasicBlock`, except ``bn1`` normalizes the
    block's input (``inplanes`` channels) and ``downsample`` is a bare 1x1 conv.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        norm_layer: NormLayer | None = None,
        plain: bool = False,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("PreActBasicBlock: only groups=1 and base_width=64 are supported")
        norm_layer = norm_layer or nn.BatchNorm2d
        self.bn1 = norm_layer(inplanes)
        self.relu = nn.ReLU()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes)
        self._init_shortcut(downsample, plain)
        self.stride = stride

    def _branch_from(self, pre: Tensor) -> Tensor:
        out = self.conv1(pre)
        return self.conv2(norm_relu(self.bn2, self.relu, out))

    def zero_init_last(self) -> None:
        """Start the block as the identity: no BatchNorm follows the last conv, so zero its weight."""
        nn.init.zeros_(self.conv2.weight)


class PreActBottleneck(_PreActBlock):
    """``x + conv3(relu(bn3(conv2(relu(bn2(conv1(relu(bn1(x)))))))))``: the pre-activation Bottleneck."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        norm_layer: NormLayer | None = None,
        plain: bool = False,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.bn1 = norm_layer(inplanes)
        self.relu = nn.ReLU()
        self.conv1 = conv1x1(inplanes, width)
        self.bn2 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn3 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self._init_shortcut(downsample, plain)
        self.stride = stride

    def _branch_from(self, pre: Tensor) -> Tensor:
        out = self.conv1(pre)
        out = self.conv2(norm_relu(self.bn2, self.relu, out))
        return self.conv3(norm_relu(self.bn3, self.relu, out))

    def zero_init_last(self) -> None:
        """Start the block as the identity: no BatchNorm follows the last conv, so zero its weight."""
        nn.init.zeros_(self.conv3.weight)


__all__ = [
    "BasicBlock",
    "Bottleneck",
    "OptionAShortcut",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ResidualAdd",
    "conv1x1",
    "conv3x3",
    "projection_shortcut",
]
