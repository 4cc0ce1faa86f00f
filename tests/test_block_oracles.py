"""Every residual block kind against the NumPy references of tests/numpy_blocks.py, in train and eval mode.

The references are written from the papers and call nothing of minires, so a block that computes the wrong
thing (BN and ReLU swapped, the shortcut added after the ReLU, option A padding the wrong channels, a
pre-activation projection reading x instead of relu(bn1(x)), ...) fails here even though
``block(x) == block.add(block.branch(x), block.shortcut(x))`` still holds.
"""

from __future__ import annotations

import numpy as np
import numpy_blocks as ref
import pytest

import minires as mr
import minires.nn as nn
from minires.models.blocks import (
    BasicBlock,
    Bottleneck,
    OptionAShortcut,
    PreActBasicBlock,
    PreActBottleneck,
    conv1x1,
    projection_shortcut,
)


def identity(x, pre=None):
    return x


# name -> (minires block, NumPy reference, reference shortcut (None: plain), stride, input channels)
CASES = {
    "basic-identity": (lambda: BasicBlock(4, 4), ref.basic_block, lambda p, t: identity, 1, 4),
    "basic-projection": (lambda: BasicBlock(4, 8, 2, projection_shortcut(4, 8, 2)), ref.basic_block,
                         lambda p, t: lambda x: ref.projection(x, p, 2, t), 2, 4),
    "basic-option-a": (lambda: BasicBlock(4, 8, 2, OptionAShortcut(4, 8, 2)), ref.basic_block,
                       lambda p, t: lambda x: ref.option_a(x, 8, 2), 2, 4),
    "basic-plain": (lambda: BasicBlock(4, 8, 2, plain=True), ref.basic_block, lambda p, t: None, 2, 4),
    "bottleneck-identity": (lambda: Bottleneck(16, 4), ref.bottleneck, lambda p, t: identity, 1, 16),
    "bottleneck-projection": (lambda: Bottleneck(8, 4, 2, projection_shortcut(8, 16, 2)), ref.bottleneck,
                              lambda p, t: lambda x: ref.projection(x, p, 2, t), 2, 8),
    "bottleneck-plain": (lambda: Bottleneck(16, 4, plain=True), ref.bottleneck, lambda p, t: None, 1, 16),
    "preact-identity": (lambda: PreActBasicBlock(4, 4), ref.preact_basic_block, lambda p, t: identity, 1, 4),
    # the first block of a pre-activation stage: its shortcut reads the pre-activated input (He et al.'s code)
    "preact-option-a": (lambda: PreActBasicBlock(4, 8, 2, OptionAShortcut(4, 8, 2)), ref.preact_basic_block,
                        lambda p, t: lambda x, pre: ref.option_a(pre, 8, 2), 2, 4),
    "preact-projection": (lambda: PreActBasicBlock(4, 8, 2, nn.Sequential(conv1x1(4, 8, 2))), ref.preact_basic_block,
                          lambda p, t: lambda x, pre: ref.projection(pre, p, 2, t, with_bn=False), 2, 4),
    "preact-plain": (lambda: PreActBasicBlock(4, 8, 2, plain=True), ref.preact_basic_block, lambda p, t: None, 2, 4),
    "preact-bottleneck-identity": (lambda: PreActBottleneck(16, 4), ref.preact_bottleneck, lambda p, t: identity, 1, 16),
    "preact-bottleneck-projection": (lambda: PreActBottleneck(8, 4, 2, nn.Sequential(conv1x1(8, 16, 2))), ref.preact_bottleneck,
                                     lambda p, t: lambda x, pre: ref.projection(pre, p, 2, t, with_bn=False), 2, 8),
}


def randomized(block: nn.Module, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random conv weights, BN scales/shifts and running statistics; returns them as NumPy arrays."""
    state = {}
    for key, value in block.state_dict().items():
        shape = tuple(value.shape)
        if key.endswith("running_var") or (key.endswith(".weight") and len(shape) == 1):
            state[key] = rng.uniform(0.5, 1.5, shape)
        elif key.endswith("num_batches_tracked"):
            state[key] = np.array(3)
        else:
            state[key] = rng.standard_normal(shape) * (0.5 if len(shape) == 1 else 1 / np.sqrt(np.prod(shape[1:])))
    block.load_state_dict(state)
    return state


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", CASES)
def test_block_matches_numpy_reference(case: str, train: bool) -> None:
    make, reference, make_shortcut, stride, channels = CASES[case]
    rng = np.random.default_rng(sorted(CASES).index(case))
    block = make().double()
    params = randomized(block, rng)
    block.train(train)
    x = rng.standard_normal((3, channels, 6, 6))
    with mr.no_grad():
        got = block(mr.tensor(x)).numpy()
    expected = reference(x, params, stride, make_shortcut(params, train), train)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_numpy_conv_reference_is_a_cross_correlation() -> None:
    """The oracle's own convolution against a hand-computed case: a 2x2 kernel picks out shifted pixels."""
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.array([[[[0.0, 1.0], [0.0, 0.0]]]])  # top-right tap: out[i, j] = x[i, j + 1] (stride 2, no pad)
    np.testing.assert_array_equal(ref.conv2d(x, w, stride=2)[0, 0], [[1.0, 3.0], [9.0, 11.0]])
