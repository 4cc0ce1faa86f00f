"""Gradients through residual blocks and whole ResNets, checked against finite differences (float64),
and the skip connection's defining property: the gradient at a block's input is the upstream gradient
(carried unchanged by the identity) plus what the residual branch sends back -- read with hooks."""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
import minires.nn as nn
from minires import models
from minires.models import (
    BasicBlock,
    Bottleneck,
    OptionAShortcut,
    PreActBasicBlock,
    PreActBottleneck,
    projection_shortcut,
)


def randomize_batchnorm(model: nn.Module, rng: np.random.Generator) -> None:
    """Give every BatchNorm a random scale/shift and running statistics, so eval mode is not trivial."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data[...] = rng.uniform(0.5, 1.5, c)
            m.bias.data[...] = rng.uniform(-0.5, 0.5, c)
            m.running_mean.data[...] = rng.uniform(-0.5, 0.5, c)
            m.running_var.data[...] = rng.uniform(0.5, 2.0, c)


def make_block(kind: str, projection: bool) -> tuple[nn.Module, tuple[int, ...]]:
    """A tiny float64 block and its input shape: 2-8 channels, 4x4 or 5x5 grids, batch 2."""
    if kind in ("basic", "preact_basic"):
        block_cls = BasicBlock if kind == "basic" else PreActBasicBlock
        if projection:  # 2 -> 3 channels, stride 2 on a 5x5 grid (odd size: padding edges matter)
            ds = projection_shortcut(2, 3, 2) if kind == "basic" else nn.Sequential(models.conv1x1(2, 3, 2))
            block, shape = block_cls(2, 3, stride=2, downsample=ds), (2, 2, 5, 5)
        else:
            block, shape = block_cls(3, 3), (2, 3, 4, 4)
    elif kind in ("bottleneck", "preact_bottleneck"):
        block_cls = Bottleneck if kind == "bottleneck" else PreActBottleneck
        if projection:  # 4 -> 8 channels (width 2), stride 2
            ds = projection_shortcut(4, 8, 2) if kind == "bottleneck" else nn.Sequential(models.conv1x1(4, 8, 2))
            block, shape = block_cls(4, 2, stride=2, downsample=ds), (2, 4, 5, 5)
        else:
            block, shape = block_cls(8, 2), (2, 8, 4, 4)
    elif kind == "option_a":  # He et al.'s CIFAR block: 2 -> 4 channels, parameter-free shortcut
        block, shape = BasicBlock(2, 4, stride=2, downsample=OptionAShortcut(2, 4, 2)), (2, 2, 5, 5)
    elif kind == "plain":
        block, shape = BasicBlock(2, 3, stride=2, plain=True), (2, 2, 5, 5)
    else:
        raise ValueError(kind)
    block = block.double()
    randomize_batchnorm(block, np.random.default_rng(1))
    return block, shape


BLOCK_CASES = [(k, p) for k in ("basic", "bottleneck", "preact_basic", "preact_bottleneck") for p in (False, True)]
BLOCK_CASES += [("option_a", True), ("plain", False)]


def leaf_input(shape: tuple[int, ...], seed: int = 0) -> mr.Tensor:
    data = np.random.default_rng(seed).standard_normal(shape)
    return mr.tensor(data, dtype=mr.float64, requires_grad=True)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(("kind", "projection"), BLOCK_CASES)
def test_block_full_gradcheck(kind: str, projection: bool, train: bool) -> None:
    """Full Jacobian of a block against central differences, over the input and every parameter."""
    block, shape = make_block(kind, projection)
    block.train(train)
    params = list(block.parameters())
    assert all(p.dtype == np.float64 for p in params)
    x = leaf_input(shape)
    assert mr.gradcheck(lambda x, *ps: block(x), [x, *params], eps=1e-6, atol=1e-6, rtol=1e-5)


def kink_margin(model: nn.Module, x: mr.Tensor) -> float:
    """How far ``model(x)`` is from its nearest non-differentiable point: the smallest |input| of any
    ReLU, and the smallest gap between the two largest (positive) values of any max-pool window."""
    margins: list[float] = []

    def on_relu(module, args, out):
        margins.append(float(np.abs(args[0].numpy()).min()))

    def on_pool(module, args, out):
        k, s, p = module.kernel_size, module.stride, module.padding
        k, s, p = (v[0] if isinstance(v, tuple) else v for v in (k, s, p))
        a = np.pad(args[0].numpy(), ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
        windows = np.lib.stride_tricks.sliding_window_view(a, (k, k), axis=(2, 3))[:, :, ::s, ::s]
        top2 = np.sort(windows.reshape(*windows.shape[:4], k * k), axis=-1)[..., -2:]
        gaps = (top2[..., 1] - top2[..., 0])[top2[..., 1] > 0]
        margins.append(float(gaps.min()) if gaps.size else np.inf)

    handles = [m.register_forward_hook(on_relu) for m in model.modules() if isinstance(m, nn.ReLU)]
    handles += [m.register_forward_hook(on_pool) for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    with mr.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return min(margins)


def whole_model_gradcheck(model: nn.Module, shape: tuple[int, ...], eps: float = 1e-8) -> None:
    """Fast-mode gradcheck of a whole network over its input and all parameters, in train mode.

    ReLU networks are only piecewise smooth: a central difference that steps across a kink (a ReLU
    input changing sign, a max-pool winner changing) is wrong by O(1) in that unit. With hundreds of
    thousands of ReLU units and every weight moved at once, eps = 1e-6 crosses a few kinks and the
    directional derivative is off by ~1%. So: step eps = 1e-8 (float64 keeps the round-off near 1e-7
    relative) and pick an input whose nearest kink is at least 2e-6 away, where a step moves a
    unit's pre-activation by ~1e-7 at most (measured: |d z / d t| is ~10 along these directions).
    """
    model = model.double().train()
    params = list(model.parameters())
    for seed in range(10):
        x = leaf_input(shape, seed)
        if kink_margin(model, x) > 2e-6:
            break
    else:
        pytest.fail("no input among 10 seeds keeps every ReLU and max-pool 2e-6 away from a kink")
    # Random directional derivatives u^T J v over the input and all parameters at once.
    assert mr.gradcheck(lambda x, *ps: model(x), [x, *params], eps=eps, atol=1e-6, rtol=1e-5, fast_mode=True, n_directions=3)


def test_resnet18_imagenet_stem_fast_gradcheck() -> None:
    # 64x64 -> 16x16 after the stem -> 2x2 at layer4, so train-mode BN sees 8 values per channel.
    whole_model_gradcheck(models.resnet18(num_classes=10), (2, 3, 64, 64))


def test_resnet18_cifar_stem_fast_gradcheck() -> None:
    # 16x16 -> 2x2 at layer4.
    whole_model_gradcheck(models.resnet18(num_classes=10, stem="cifar"), (2, 3, 16, 16))


def test_resnet20_fast_gradcheck() -> None:
    whole_model_gradcheck(models.resnet20(), (2, 3, 16, 16))


def test_preact_resnet20_fast_gradcheck() -> None:
    whole_model_gradcheck(models.resnet20(preact=True), (2, 3, 8, 8))


def test_fast_gradcheck_catches_a_wrong_gradient() -> None:
    """The whole-model check has teeth: a block whose backward is off by 1% fails it."""

    class ScaledGrad(mr.Function):
        @staticmethod
        def forward(ctx, x):
            return x.copy()

        @staticmethod
        def backward(ctx, g):
            return g * 1.01

    model = models.resnet20().double().train()
    block = model.layer2[1]
    block.add.register_forward_hook(lambda m, args, out: ScaledGrad.apply(out))
    with pytest.raises(mr.GradcheckError):
        whole_model_gradcheck(model, (2, 3, 8, 8))


# ----- the identity path carries the upstream gradient unchanged --------------------------------------------


def vjp(fn, x: mr.Tensor, grad: mr.Tensor) -> np.ndarray:
    """d<grad, fn(x)>/dx, computed on a fresh leaf copy of x."""
    leaf = mr.tensor(x.numpy().copy(), dtype=mr.float64, requires_grad=True)
    fn(leaf).backward(grad)
    return leaf.grad.numpy()


@pytest.mark.parametrize(("kind", "projection"), BLOCK_CASES[:8] + [("option_a", True)])
def test_input_gradient_is_identity_plus_branch(kind: str, projection: bool) -> None:
    """x.grad == (shortcut's VJP of the upstream gradient) + (branch's VJP of it); for an identity
    shortcut the first term is the upstream gradient itself. The upstream gradient (at the add's
    output) and the block's input gradient are read with hooks."""
    block, shape = make_block(kind, projection)
    block.train()
    x = leaf_input(shape)
    captured = {}
    x.register_hook(lambda g: captured.__setitem__("input", g.numpy().copy()))

    def on_add(module, args, out):
        out.register_hook(lambda g: captured.__setitem__("upstream", g.numpy().copy()))

    block.add.register_forward_hook(on_add)
    y = block(x)
    y.backward(mr.tensor(np.random.default_rng(2).standard_normal(y.shape), dtype=mr.float64))
    upstream = mr.tensor(captured["upstream"], dtype=mr.float64)  # dL/d(branch + identity)

    from_branch = vjp(block.branch, x, upstream)
    if block.downsample is None:
        through_identity = upstream.numpy()  # unchanged: the identity's Jacobian is I
    else:
        through_identity = vjp(block.shortcut, x, upstream)
    np.testing.assert_array_equal(captured["input"], x.grad.numpy())
    if kind.startswith("preact") and projection:
        # Branch and projection share relu(bn1(x)); backward sums their gradients *before* going
        # through bn1, the separate VJPs after, so the two sums differ by rounding only.
        np.testing.assert_allclose(x.grad.numpy(), through_identity + from_branch, rtol=0, atol=1e-12)
    else:
        np.testing.assert_array_equal(x.grad.numpy(), through_identity + from_branch)


def test_identity_gradient_decomposition_through_a_whole_network() -> None:
    """In every identity block of a resnet20, the gradient reaching the block's input equals the gradient
    at its residual add plus the branch's contribution -- read with forward and tensor hooks."""
    model = models.resnet20().double().train()
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    records: dict[int, dict] = {i: {} for i in range(len(blocks))}

    def watch(i: int, block: BasicBlock) -> None:
        record = records[i]

        def on_block(module, args, out):  # runs after the block: args[0] is its input
            record["input"] = args[0]
            args[0].register_hook(lambda g: record.__setitem__("input_grad", g.numpy().copy()))

        def on_add(module, args, out):  # the add's output: its gradient is the upstream gradient
            out.register_hook(lambda g: record.__setitem__("upstream", g.numpy().copy()))

        block.register_forward_hook(on_block)
        block.add.register_forward_hook(on_add)

    for i, block in enumerate(blocks):
        watch(i, block)
    x = leaf_input((2, 3, 8, 8))
    out = model(x)
    out.backward(mr.tensor(np.random.default_rng(3).standard_normal(out.shape), dtype=mr.float64))
    identity_blocks = [i for i, b in enumerate(blocks) if b.downsample is None]
    assert len(blocks) == 9 and len(identity_blocks) == 7
    for i in identity_blocks:
        record = records[i]
        upstream = mr.tensor(record["upstream"], dtype=mr.float64)
        expected = record["upstream"] + vjp(blocks[i].branch, record["input"], upstream)
        np.testing.assert_array_equal(record["input_grad"], expected)
