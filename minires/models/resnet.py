"""The torchvision-style ResNet family: resnet18/34/50/101/152.

The structure, the attribute names and therefore the state_dict keys are torchvision's
(``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1``..``layer4``, ``avgpool``, ``fc``), so weights
exported from torchvision with numpy load with ``mr.load`` + ``load_state_dict`` and give the same
logits. Initialisation is torchvision's too: Kaiming-normal (fan_out, ReLU gain) for convolutions,
BatchNorm scale 1 and shift 0, and with ``zero_init_residual`` the last BatchNorm of every block at 0.

Options beyond torchvision, for teaching:

- ``stem="cifar"``: a 3x3 stride-1 convolution instead of the 7x7 stride-2 one, and no max pool
  (``maxpool`` is an ``nn.Identity``), for 32x32 images. Key names are unchanged; only ``conv1.weight``'s
  shape differs.
- ``plain=True``: the same network with every skip connection removed, for degradation studies. The
  projection shortcuts (``downsample``) go too, since nothing needs them, so a plain net has fewer
  parameters (resnet18: 11,515,688 instead of 11,689,512) and no ``downsample`` keys. (He et al.'s CIFAR
  nets in ``cifar_resnet`` use parameter-free shortcuts, so there the plain twin has the same count.)
- ``preact=True``: pre-activation blocks (He et al. 2016). The stem keeps its conv-BN-ReLU (the paper's
  "first activation right after conv1"), every block is BN-ReLU-conv, and because nothing normalises the
  last block's sum, a final ``final_bn`` + ReLU sits between ``layer4`` and ``avgpool`` (the paper's
  "extra activation after the last element-wise addition"). Projection shortcuts are bare 1x1 convs.
"""

from __future__ import annotations

from typing import Sequence

import minires.nn as nn
from minires.models.blocks import (
    BasicBlock,
    Bottleneck,
    NormLayer,
    PreActBasicBlock,
    PreActBottleneck,
    conv1x1,
    norm_relu,
    projection_shortcut,
)
from minires.tensor import Tensor

BlockType = type[BasicBlock] | type[Bottleneck] | type[PreActBasicBlock] | type[PreActBottleneck]

STEMS = ("imagenet", "cifar")


def check_image_input(model_name: str, x: Tensor, in_channels: int, min_size: int, why: str) -> None:
    """Raise a clear error unless ``x`` is ``(N, in_channels, H, W)`` with H, W >= ``min_size``."""
    if x.ndim != 4:
        raise ValueError(f"{model_name}: expected a batch of images (N, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    if c != in_channels:
        raise ValueError(
            f"{model_name}: input has {c} channels, but conv1 expects {in_channels} (input shape {x.shape})"
        )
    if h < min_size or w < min_size:
        raise ValueError(f"{model_name}: input is {h}x{w}, but {why}, so it needs at least {min_size}x{min_size}")


def init_resnet_weights(model: nn.Module, zero_init_residual: bool) -> None:
    """torchvision's ResNet initialisation (also used by the CIFAR nets).

    Convolutions: ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``; BatchNorm: weight 1, bias 0;
    ``nn.Linear`` keeps its own default init. With ``zero_init_residual``, each block's last BatchNorm
    scale (for pre-activation blocks: the last conv's weight) starts at zero, so every block starts as
    the identity.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, (BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck)):
                m.zero_init_last()


class ResNetBase(nn.Module):
    """What both ResNet families share: ``forward = fc(flatten(avgpool(forward_features(x))))``.

    Subclasses build the stem, the stages, ``avgpool`` and ``fc``, and define ``forward_features``
    (image -> last feature map), which probes and feature extractors can call on their own.
    """

    avgpool: nn.AdaptiveAvgPool2d
    fc: nn.Linear

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        x = self.avgpool(x).flatten(1)
        return self.fc(x)

    inplanes: int  # channels entering the next stage; _make_layer advances it

    def _downsample(self, inplanes: int, out_planes: int, stride: int) -> nn.Module | None:
        """The shortcut of a stage's first block when it changes shape (each family has its own)."""
        raise NotImplementedError

    def _make_layer(self, block: BlockType, planes: int, blocks: int, stride: int = 1, **block_kwargs: object) -> nn.Sequential:
        """One stage: a first block that may change shape (stride, channels), then ``blocks - 1`` more."""
        out_planes = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_planes:
            downsample = self._downsample(self.inplanes, out_planes, stride)
        layers = [block(self.inplanes, planes, stride, downsample, **block_kwargs)]  # type: ignore[arg-type]
        self.inplanes = out_planes
        layers += [block(out_planes, planes, **block_kwargs) for _ in range(1, blocks)]  # type: ignore[arg-type]
        return nn.Sequential(*layers)


class ResNet(ResNetBase):
    """A torchvision-layout ResNet: stem, four stages of residual blocks, global average pool, ``fc``.

    ``block`` is :class:`BasicBlock` or :class:`Bottleneck` (or their pre-activation versions) and
    ``layers`` the number of blocks per stage, e.g. ``ResNet(BasicBlock, [2, 2, 2, 2])`` is resnet18.
    Stage ``i`` has ``64 * 2**i * block.expansion`` output channels; stages 2-4 halve the grid with a
    stride-2 first block. Input ``(N, in_channels, H, W)`` -> logits ``(N, num_classes)``.
    """

    def __init__(
        self,
        block: BlockType,
        layers: Sequence[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        stem: str = "imagenet",
        plain: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        norm_layer: NormLayer | None = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"ResNet: stem must be one of {STEMS}, got {stem!r}")
        if len(layers) != 4:
            raise ValueError(f"ResNet: layers must give 4 stage depths, got {list(layers)}")
        self._norm_layer = norm_layer or nn.BatchNorm2d
        self.block = block
        self.stem = stem
        self.plain = plain
        self.preact = bool(getattr(block, "preact", False))
        self.in_channels = in_channels
        self.inplanes = 64
        self.groups = groups
        self.base_width = width_per_group

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = self._norm_layer(64)
        self.relu = nn.ReLU()
        if stem == "imagenet":
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.maxpool = nn.Identity()
        kwargs = {"groups": groups, "base_width": width_per_group, "norm_layer": self._norm_layer, "plain": plain}
        self.layer1 = self._make_layer(block, 64, layers[0], **kwargs)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, **kwargs)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, **kwargs)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, **kwargs)
        if self.preact:
            self.final_bn = self._norm_layer(512 * block.expansion)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_resnet_weights(self, zero_init_residual)

    @property
    def min_input_size(self) -> int:
        """Smallest H and W accepted: the total downsampling (32 for the imagenet stem, 8 for cifar).

        Smaller images would shrink to 1x1 before the last stage, whose strided convolutions would then
        see mostly padding (and BatchNorm in training would normalise single values).
        """
        return 32 if self.stem == "imagenet" else 8

    def _downsample(self, inplanes: int, out_planes: int, stride: int) -> nn.Module | None:
        """torchvision's projection (1x1 conv + norm); a bare 1x1 conv for pre-activation blocks; none when plain."""
        if self.plain:
            return None
        if self.preact:
            return nn.Sequential(conv1x1(inplanes, out_planes, stride))
        return projection_shortcut(inplanes, out_planes, stride, self._norm_layer)

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem and the four stages: ``(N, C, H, W) -> (N, 512 * expansion, H / 32, W / 32)``
        (``H / 8`` with the cifar stem)."""
        why = (
            "the imagenet stem and stages downsample by 32 (7x7/2 conv, 3x3/2 max pool, three stride-2 stages); "
            "use stem='cifar' for small images"
            if self.stem == "imagenet"
            else "the cifar stem and stages downsample by 8 (three stride-2 stages)"
        )
        check_image_input(f"ResNet ({self.stem} stem)", x, self.in_channels, self.min_input_size, why)
        x = self.maxpool(norm_relu(self.bn1, self.relu, self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        if self.preact:
            x = norm_relu(self.final_bn, self.relu, x)
        return x


# depth -> (blocks per stage, Bottleneck blocks?): torchvision's five ResNets, the one list of them.
TORCHVISION_LAYOUTS: dict[int, tuple[tuple[int, int, int, int], bool]] = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}


def _resnet(
    depth: int,
    num_classes: int,
    stem: str,
    zero_init_residual: bool,
    plain: bool,
    preact: bool,
    **kwargs: object,
) -> ResNet:
    layers, bottleneck = TORCHVISION_LAYOUTS[depth]
    if bottleneck:
        block: BlockType = PreActBottleneck if preact else Bottleneck
    else:
        block = PreActBasicBlock if preact else BasicBlock
    return ResNet(block, layers, num_classes=num_classes, zero_init_residual=zero_init_residual, stem=stem, plain=plain, **kwargs)  # type: ignore[arg-type]


def resnet18(
    num_classes: int = 1000,
    stem: str = "imagenet",
    zero_init_residual: bool = False,
    plain: bool = False,
    preact: bool = False,
    **kwargs: object,
) -> ResNet:
    """ResNet-18: BasicBlocks [2, 2, 2, 2]; 11,689,512 parameters (ImageNet stem, 1000 classes)."""
    return _resnet(18, num_classes, stem, zero_init_residual, plain, preact, **kwargs)


def resnet34(
    num_classes: int = 1000,
    stem: str = "imagenet",
    zero_init_residual: bool = False,
    plain: bool = False,
    preact: bool = False,
    **kwargs: object,
) -> ResNet:
    """ResNet-34: BasicBlocks [3, 4, 6, 3]; 21,797,672 parameters."""
    return _resnet(34, num_classes, stem, zero_init_residual, plain, preact, **kwargs)


def resnet50(
    num_classes: int = 1000,
    stem: str = "imagenet",
    zero_init_residual: bool = False,
    plain: bool = False,
    preact: bool = False,
    **kwargs: object,
) -> ResNet:
    """ResNet-50: Bottlenecks [3, 4, 6, 3]; 25,557,032 parameters."""
    return _resnet(50, num_classes, stem, zero_init_residual, plain, preact, **kwargs)


def resnet101(
    num_classes: int = 1000,
    stem: str = "imagenet",
    zero_init_residual: bool = False,
    plain: bool = False,
    preact: bool = False,
    **kwargs: object,
) -> ResNet:
    """ResNet-101: Bottlenecks [3, 4, 23, 3]; 44,549,160 parameters."""
    return _resnet(101, num_classes, stem, zero_init_residual, plain, preact, **kwargs)


def resnet152(
    num_classes: int = 1000,
    stem: str = "imagenet",
    zero_init_residual: bool = False,
    plain: bool = False,
    preact: bool = False,
    **kwargs: object,
) -> ResNet:
    """ResNet-152: Bottlenecks [3, 8, 36, 3]; 60,192,808 parameters."""
    return _resnet(152, num_classes, stem, zero_init_residual, plain, preact, **kwargs)


__all__ = [
    "TORCHVISION_LAYOUTS", "ResNet", "ResNetBase", "check_image_input", "init_resnet_weights",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
]
