"""minires.testing keeps its promises: bounds, margins from kinks, no ties, broadcastable shapes, and
conv/pool configurations that are valid (checked against a brute-force count of window positions)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from minires.testing import (
    arrays_away_from,
    arrays_without_ties,
    broadcastable_shapes,
    conv_configs,
    conv_output_size,
    float_arrays,
    pool_configs,
    shapes,
)


@given(shape=shapes(min_dims=1, max_dims=3, min_side=2, max_side=4))
def test_shapes_respect_their_bounds(shape):
    assert 1 <= len(shape) <= 3
    assert all(2 <= n <= 4 for n in shape)


@given(pair=broadcastable_shapes(3, max_dims=3, max_side=4))
def test_broadcastable_shapes_broadcast(pair):
    assert len(pair) == 3
    np.broadcast_shapes(*pair)  # raises if they do not
    assert all(len(s) <= 3 and all(n <= 4 for n in s) for s in pair)


@given(x=float_arrays(shapes(max_dims=3), low=-2.0, high=0.5))
def test_float_arrays_are_bounded_float64(x):
    assert x.dtype == np.float64
    assert np.isfinite(x).all()
    assert ((x >= -2.0) & (x <= 0.5)).all()


@given(x=float_arrays((3, 2), dtype=np.float32))
def test_float_arrays_other_dtype(x):
    assert x.dtype == np.float32 and x.shape == (3, 2)


@given(x=arrays_away_from(shapes(max_dims=3), kinks=(0.0, 1.0, -0.5), margin=0.1))
def test_arrays_away_from_keep_the_margin(x):
    for k in (0.0, 1.0, -0.5):
        assert (np.abs(x - k) >= 0.1).all()
    assert ((x >= -3.0) & (x <= 3.0)).all()


def pairwise_gaps(x):
    v = np.sort(x.ravel())
    return np.diff(v)


@given(x=arrays_without_ties(shapes(max_dims=3, max_side=5), gap=0.05))
def test_arrays_without_ties_keep_values_apart(x):
    assert x.dtype == np.float64
    if x.size > 1:
        assert pairwise_gaps(x).min() >= 0.05 - 1e-12
    assert np.isfinite(x).all()


@settings(max_examples=10)
@given(x=arrays_without_ties((20, 20), gap=0.1))
def test_arrays_without_ties_widen_the_range_when_needed(x):
    # 400 values 0.1 apart cannot fit in [-3, 3]; they must still be distinct by the gap
    assert len(np.unique(x)) == 400
    assert pairwise_gaps(x).min() >= 0.1 - 1e-12


def count_windows(size, kernel, stride, padding, dilation):
    """Window starts over the padded input whose whole (dilated) window fits: the definition, by brute force."""
    starts = range(-padding, size + padding, stride)
    return sum(1 for s in starts if s + dilation * (kernel - 1) <= size + padding - 1)


@given(size=st.integers(1, 12), kernel=st.integers(1, 4), stride=st.integers(1, 4), padding=st.integers(0, 3),
       dilation=st.integers(1, 3))
def test_conv_output_size_matches_brute_force(size, kernel, stride, padding, dilation):
    expected = count_windows(size, kernel, stride, padding, dilation)
    if size + 2 * padding >= dilation * (kernel - 1) + 1:
        assert conv_output_size(size, kernel, stride, padding, dilation) == expected


@given(cfg=conv_configs())
def test_conv_configs_are_valid(cfg):
    assert cfg.in_channels % cfg.groups == 0 and cfg.out_channels % cfg.groups == 0
    assert cfg.weight_shape == (cfg.out_channels, cfg.in_channels // cfg.groups, *cfg.kernel_size)
    n, c, oh, ow = cfg.output_shape
    assert (n, c) == (cfg.batch, cfg.out_channels)
    for size, k, s, p, d, o in zip((cfg.height, cfg.width), cfg.kernel_size, cfg.stride, cfg.padding, cfg.dilation, (oh, ow)):
        assert size >= 1 and k >= 1 and s >= 1 and p >= 0 and d >= 1
        assert size + 2 * p >= d * (k - 1) + 1  # the dilated kernel fits in the padded input
        assert o == count_windows(size, k, s, p, d) >= 1


def count_pool_windows(size, kernel, stride, padding, dilation, ceil_mode):
    """PyTorch's pooling windows, counted one by one over the padded input (length size + 2 * padding).
    Floor mode: the whole window fits. Ceil mode also keeps one more, partial window when the last full one
    left padded elements uncovered, provided it starts inside the input or the left padding."""
    reach = dilation * (kernel - 1)
    last = size + 2 * padding - 1  # the last padded position
    n = 0
    for start in range(0, size + 2 * padding, stride):
        full = start + reach <= last
        partial = ceil_mode and start > 0 and start - stride + reach < last and start - padding < size
        if full or partial:
            n += 1
    return n


@given(cfg=pool_configs())
def test_pool_configs_are_valid(cfg):
    n, c, oh, ow = cfg.output_shape
    assert (n, c) == (cfg.batch, cfg.channels)
    for size, k, s, p, d, o in zip((cfg.height, cfg.width), cfg.kernel_size, cfg.stride, cfg.padding, cfg.dilation, (oh, ow)):
        assert p <= k // 2  # PyTorch refuses padding larger than half the kernel
        assert o >= 1
        assert o == count_pool_windows(size, k, s, p, d, cfg.ceil_mode)


@given(cfg=pool_configs(allow_dilation=False))
def test_pool_configs_without_dilation(cfg):
    assert cfg.dilation == (1, 1)
