"""minires.testing keeps its promises: bounds, margins from kinks, no ties, broadcastable shapes, and
conv/pool configurations that are valid (checked against a brute-force count of window positions)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

import minires as mr
import minires.nn.functional as F
from minires.testing import (
    arrays_away_from,
    arrays_without_ties,
    basic_indices,
    broadcastable_shapes,
    class_targets,
    conv_configs,
    conv_output_size,
    float_arrays,
    integer_array_indices,
    pool_configs,
    shapes,
    tensors,
    valid_dims,
)


@given(shape=shapes(min_dims=1, max_dims=3, min_side=2, max_side=4))
def test_shapes_respect_their_bounds(shape):
    assert 1 <= len(shape) <= 3
    assert all(2 <= n <= 4 for n in shape)


@given(pair=broadcastable_shapes(3, max_dims=3, max_side=4))
def test_broadcastable_shapes_broadcast(pair):
    assert len(pair) == 3
    assert np.broadcast_shapes(*pair) == pair.result_shape  # raises if they do not broadcast
    a, b, c = pair  # still unpacks as a tuple of shapes
    assert all(len(s) <= 3 and all(n <= 4 for n in s) for s in pair)


DTYPES = st.sampled_from([np.float32, np.float64])


@given(x=float_arrays(shapes(max_dims=2), dtype=DTYPES), y=arrays_away_from((3,), dtype=DTYPES),
       z=arrays_without_ties((4,), dtype=DTYPES))
def test_dtype_may_be_a_strategy(x, y, z):
    assert {x.dtype, y.dtype, z.dtype} <= {np.dtype(np.float32), np.dtype(np.float64)}


@given(t=tensors(dtype=DTYPES, shape=shapes(max_dims=3), requires_grad=st.booleans()))
def test_tensors(t):
    assert isinstance(t, mr.Tensor) and t.is_leaf and t.grad is None
    assert t.dtype in (mr.float32, mr.float64) and t.ndim <= 3
    assert np.isfinite(t.numpy()).all() and (np.abs(t.numpy()) <= 3).all()


@given(t=tensors(dtype=np.int64, shape=(2, 3)), u=tensors(shape=(2,), requires_grad=True, elements=st.just(1.5)))
def test_tensors_with_integer_dtype_and_elements(t, u):
    assert t.dtype == mr.int64 and t.shape == (2, 3) and (np.abs(t.numpy()) <= 5).all()
    assert u.requires_grad and (u.numpy() == 1.5).all()


@given(data=st.data(), shape=shapes(max_dims=4))
def test_valid_dims_are_accepted_by_reductions(data, shape):
    dim = data.draw(valid_dims(len(shape)))
    x = np.ones(shape)
    if dim is None:
        return
    dims = (dim,) if isinstance(dim, int) else dim
    assert all(-len(shape) <= d < len(shape) for d in dims)
    assert len({d % len(shape) for d in dims}) == len(dims)
    assert mr.tensor(x).sum(dim).shape == np.sum(x, axis=dim).shape


def test_valid_dims_on_a_0d_shape():
    from hypothesis import find

    assert find(valid_dims(0), lambda _: True) is None
    with pytest.raises(ValueError, match="0-d"):
        find(valid_dims(0, allow_none=False), lambda _: True)


@given(data=st.data(), shape=shapes(min_dims=1, max_dims=3))
def test_basic_indices_give_views(data, shape):
    index = data.draw(basic_indices(shape))
    x = mr.tensor(np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape))
    out = x[index]
    np.testing.assert_array_equal(out.numpy(), x.numpy()[index])
    if out.numel():
        assert np.shares_memory(out.numpy(), x.numpy())


@given(data=st.data(), shape=shapes(min_dims=1, max_dims=3))
def test_integer_array_indices_are_in_range(data, shape):
    index = data.draw(integer_array_indices(shape))
    assert isinstance(index, tuple) and all(i.dtype.kind == "i" for i in index)
    for d, i in enumerate(index):
        assert ((i >= -shape[d]) & (i < shape[d])).all()
    x = mr.tensor(np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape), requires_grad=True)
    assert mr.gradcheck(lambda v: v[index], [x])  # repeated indices accumulate in the gradient


@given(target=class_targets(st.integers(1, 6), num_classes=4, ignore_index=-100))
def test_class_targets(target):
    assert target.dtype == np.int64 and target.ndim == 1
    assert (((target >= 0) & (target < 4)) | (target == -100)).all()


@given(target=class_targets((2, 3), num_classes=3))
def test_class_targets_of_a_shape_fit_cross_entropy(target):
    logits = mr.zeros(2, 3, 3, dtype=mr.float64)
    assert abs(F.cross_entropy(logits, mr.tensor(target)).item() - np.log(3)) < 1e-12


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


def find_any(strategy):
    return find(strategy, lambda _: True)


def pairwise_gaps(x):
    v = np.sort(x.ravel())
    return np.diff(v)


@given(x=arrays_without_ties(shapes(max_dims=3, max_side=5), gap=0.05))
def test_arrays_without_ties_keep_values_apart(x):
    assert x.dtype == np.float64
    if x.size > 1:
        assert pairwise_gaps(x).min() >= 0.05 - 1e-12
    assert np.isfinite(x).all()


@given(x=arrays_without_ties(shapes(max_dims=3, max_side=3), gap=0.05, low=-1.0, high=2.0))
def test_arrays_without_ties_stay_in_their_range(x):
    assert ((x >= -1.0) & (x <= 2.0)).all()


@settings(max_examples=10)
@given(x=arrays_without_ties((6,), gap=0.5, low=0.0, high=3.0))
def test_arrays_without_ties_fill_a_tight_range_without_passing_high(x):
    assert len(np.unique(x)) == 6 and x.max() <= 3.0 and x.min() >= 0.0
    assert pairwise_gaps(x).min() >= 0.5 - 1e-12


def test_arrays_without_ties_refuse_what_cannot_fit():
    # 7 values 0.5 apart span exactly 3.0: with the jitter they would pass high (they used to)
    with pytest.raises(ValueError, match=r"7 values at least 0.5 apart do not fit in \[0.0, 3.0\]"):
        find_any(arrays_without_ties((7,), gap=0.5, low=0.0, high=3.0))
    with pytest.raises(ValueError, match=r"400 values at least 0.1 apart do not fit in \[-3.0, 3.0\]"):
        find_any(arrays_without_ties((20, 20), gap=0.1))


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
    x = mr.ones(*cfg.input_shape)
    assert F.avg_pool2d(x, **cfg.avg_kwargs).shape == cfg.output_shape


@given(cfg=pool_configs())
def test_pool_kwargs_call_max_pool2d(cfg):
    assert F.max_pool2d(mr.ones(*cfg.input_shape), **cfg.kwargs).shape == cfg.output_shape


@given(cfg=conv_configs(same_padding=None))
def test_conv_kwargs_call_conv2d(cfg):
    x, w = mr.ones(*cfg.input_shape), mr.ones(*cfg.weight_shape)
    assert F.conv2d(x, w, **cfg.kwargs).shape == cfg.output_shape
    assert mr.nn.Conv2d(**cfg.module_kwargs)(x).shape == cfg.output_shape


@given(cfg=conv_configs(same_padding=True))
def test_same_padding_configs_keep_the_size(cfg):
    assert cfg.padding == "same" and cfg.stride == (1, 1)
    assert cfg.output_shape[2:] == cfg.input_shape[2:]
