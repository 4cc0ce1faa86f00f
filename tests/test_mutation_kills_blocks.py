"""Residual-block behaviour a mutation run (docs/mutation_testing.md) found unguarded: a pre-activation
block's ``shortcut`` run on its own (identity, and a projection of ``relu(bn1(x))`` with the norm layer's
own eps that leaves the running statistics alone), ``zero_init_last`` of the pre-activation bottleneck,
the arguments PreActBasicBlock refuses, and how an option-A shortcut prints.

Oracles: the NumPy convolution of tests/numpy_blocks.py and batch norm written out here.
"""

from __future__ import annotations

import numpy as np
import numpy_blocks as ref
import pytest

import minires as mr
import minires.nn as nn
from minires.models.blocks import BasicBlock, Bottleneck, OptionAShortcut, PreActBasicBlock, PreActBottleneck, conv1x1


def test_preact_identity_shortcut_is_x_itself() -> None:
    block = PreActBasicBlock(4, 4).double()
    x = mr.tensor(np.random.default_rng(0).standard_normal((2, 4, 5, 5)))
    np.testing.assert_array_equal(block.shortcut(x).numpy(), x.numpy())


def test_preact_projection_shortcut_on_its_own_uses_the_norms_eps_and_keeps_running_stats() -> None:
    """In training, ``shortcut(x)`` is conv1x1(relu(bn1(x))) with bn1's batch statistics and bn1's own eps
    (0.5 here, so using the default 1e-5 would show); it must not move bn1's running statistics."""
    eps = 0.5
    block = PreActBasicBlock(3, 6, 2, nn.Sequential(conv1x1(3, 6, 2)), norm_layer=lambda c: nn.BatchNorm2d(c, eps=eps))
    block = block.double().train()
    rng = np.random.default_rng(1)
    gamma, beta = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    block.bn1.weight.data[...] = gamma
    block.bn1.bias.data[...] = beta
    w = block.downsample[0].weight.numpy().copy()
    x = rng.standard_normal((4, 3, 6, 6))
    with mr.no_grad():
        got = block.shortcut(mr.tensor(x)).numpy()
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    s = (1, -1, 1, 1)
    pre = np.maximum(gamma.reshape(s) * (x - mean.reshape(s)) / np.sqrt(var.reshape(s) + eps) + beta.reshape(s), 0.0)
    np.testing.assert_allclose(got, ref.conv2d(pre, w, stride=2), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(block.bn1.running_mean.numpy(), np.zeros(3))
    np.testing.assert_array_equal(block.bn1.running_var.numpy(), np.ones(3))
    assert int(block.bn1.num_batches_tracked.numpy()) == 0


@pytest.mark.parametrize("make", [lambda: PreActBottleneck(16, 4), lambda: PreActBasicBlock(4, 4)])
def test_preact_zero_init_last_makes_the_block_the_identity(make) -> None:
    """No BatchNorm follows a pre-activation block's last conv, so zeroing that conv's weight makes F(x) = 0
    and the block returns x exactly (in training and in eval)."""
    block = make().double()
    block.zero_init_last()
    channels = 16 if isinstance(block, PreActBottleneck) else 4
    x = mr.tensor(np.random.default_rng(2).standard_normal((2, channels, 4, 4)))
    for train in (True, False):
        block.train(train)
        with mr.no_grad():
            np.testing.assert_array_equal(block(x).numpy(), x.numpy())


@pytest.mark.parametrize("kwargs", [{"groups": 2}, {"base_width": 128}])
def test_preact_basic_block_refuses_groups_and_width(kwargs) -> None:
    """As torchvision's BasicBlock: grouped or widened 3x3 pairs are a Bottleneck feature."""
    with pytest.raises(ValueError, match="only groups=1 and base_width=64"):
        PreActBasicBlock(4, 4, **kwargs)


def test_option_a_shortcut_prints_its_configuration() -> None:
    assert repr(OptionAShortcut(16, 32)) == "OptionAShortcut(16, 32, stride=2)"
    assert repr(OptionAShortcut(16, 32, 2, padding="split")) == "OptionAShortcut(16, 32, stride=2, padding='split')"


def test_option_a_default_stride_halves_the_grid() -> None:
    x = np.random.default_rng(3).standard_normal((2, 4, 5, 5))
    got = OptionAShortcut(4, 8)(mr.tensor(x)).numpy()
    np.testing.assert_array_equal(got, ref.option_a(x, 8, 2))


@pytest.mark.parametrize("kind", [BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck])
def test_blocks_keep_their_stride_as_torchvision_blocks_do(kind) -> None:
    assert kind(8, 8, 2, plain=True).stride == 2


@pytest.mark.parametrize("kind", [Bottleneck, PreActBottleneck])
@pytest.mark.parametrize(
    "planes,groups,base_width,width",
    [(64, 1, 64, 64), (4, 1, 128, 8), (4, 2, 64, 8), (8, 4, 32, 16)],
)
def test_bottleneck_inner_width_follows_torchvision(kind, planes, groups, base_width, width) -> None:
    """Inner width = int(planes * base_width / 64) * groups (wide ResNets, ResNeXt; base_width 64 by default);
    the 3x3 conv is grouped."""
    block = kind(16, planes, groups=groups, base_width=base_width) if base_width != 64 else kind(16, planes, groups=groups)
    assert tuple(block.conv1.weight.shape) == (width, 16, 1, 1)
    assert tuple(block.conv2.weight.shape) == (width, width // groups, 3, 3)
    assert tuple(block.conv3.weight.shape) == (planes * 4, width, 1, 1)
    assert tuple(block.bn2.weight.shape) == (width,)
    # bn3 follows conv3 in the post-activation block, precedes it in the pre-activation one
    assert tuple(block.bn3.weight.shape) == ((planes * 4,) if kind is Bottleneck else (width,))


def test_plain_preact_bottleneck_has_no_skip() -> None:
    """plain=True: the block is its residual function alone, x is not added back (NumPy reference)."""
    block = PreActBottleneck(16, 4, plain=True).double().eval()
    assert block.add is None and block.downsample is None
    params = {k: v.numpy().copy() for k, v in block.state_dict().items()}
    x = np.random.default_rng(4).standard_normal((2, 16, 4, 4))
    with mr.no_grad():
        got = block(mr.tensor(x)).numpy()
    np.testing.assert_allclose(got, ref.preact_bottleneck(x, params, 1, None, False), rtol=1e-10, atol=1e-12)


def _grouped_conv(x: np.ndarray, w: np.ndarray, stride: int, padding: int, groups: int) -> np.ndarray:
    """A grouped convolution from the reference one: group g maps input channels g*C/G.. to outputs g*O/G.."""
    ci, co = x.shape[1] // groups, w.shape[0] // groups
    return np.concatenate(
        [ref.conv2d(x[:, g * ci : (g + 1) * ci], w[g * co : (g + 1) * co], stride, padding) for g in range(groups)], axis=1
    )


def test_grouped_wide_bottleneck_matches_a_numpy_reference() -> None:
    """A ResNeXt-style block (groups=4, base_width=32: inner width 16) in eval mode, written out in NumPy:
    relu(bn3(conv3(relu(bn2(gconv2(relu(bn1(conv1(x)))))))) + x)."""
    block = Bottleneck(32, 8, groups=4, base_width=32).double().eval()
    rng = np.random.default_rng(5)
    p = {}
    for key, value in block.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        shape = tuple(value.shape)
        p[key] = rng.uniform(0.5, 1.5, shape) if key.endswith("running_var") else rng.standard_normal(shape) * 0.3
        value.data[...] = p[key]
    x = rng.standard_normal((2, 32, 5, 5))
    f = ref.relu(ref.batchnorm(ref.conv2d(x, p["conv1.weight"]), p, "bn1", False))
    f = ref.relu(ref.batchnorm(_grouped_conv(f, p["conv2.weight"], 1, 1, 4), p, "bn2", False))
    expected = ref.relu(ref.batchnorm(ref.conv2d(f, p["conv3.weight"]), p, "bn3", False) + x)
    with mr.no_grad():
        got = block(mr.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_option_a_with_equal_channels_only_subsamples() -> None:
    x = np.random.default_rng(6).standard_normal((2, 4, 6, 6))
    np.testing.assert_array_equal(OptionAShortcut(4, 4, 2)(mr.tensor(x)).numpy(), ref.option_a(x, 4, 2))


@pytest.mark.parametrize("kind", [BasicBlock, PreActBasicBlock])
def test_plain_drops_a_given_downsample(kind) -> None:
    """plain=True means no shortcut at all: a downsample passed in is dropped, weights and all."""
    block = kind(4, 8, 2, nn.Sequential(conv1x1(4, 8, 2)), plain=True)
    assert block.downsample is None and block.add is None
    assert not [k for k in block.state_dict() if k.startswith("downsample")]
