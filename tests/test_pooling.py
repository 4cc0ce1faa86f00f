"""Pooling: values against direct loop oracles, gradients against finite differences, PyTorch's
ceil_mode / count_include_pad / adaptive-bin rules and the first-maximum tie convention."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minires as mr
from minires.backend import to_numpy
from minires.ops.pooling import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d
from minires.testing import arrays_without_ties, float_arrays, pool_configs

# the `device` fixture only returns a string, so reusing it across hypothesis examples is safe
FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _t(a, device, requires_grad=False):
    return mr.tensor(a, device=device, requires_grad=requires_grad)


def _positions(o, size, k, s, p, d):
    """Input positions of window o along one axis that fall inside the input."""
    return [o * s - p + i * d for i in range(k) if 0 <= o * s - p + i * d < size]


def max_pool_loops(x, cfg):
    """Max and first-maximum flat index of each window, one output at a time."""
    n, c, h, w = x.shape
    oh, ow = cfg.output_shape[2:]
    out, idx = np.empty((n, c, oh, ow)), np.empty((n, c, oh, ow), dtype=np.int64)
    for a in range(n):
        for b in range(c):
            for y in range(oh):
                for z in range(ow):
                    rows = _positions(y, h, cfg.kernel_size[0], cfg.stride[0], cfg.padding[0], cfg.dilation[0])
                    cols = _positions(z, w, cfg.kernel_size[1], cfg.stride[1], cfg.padding[1], cfg.dilation[1])
                    best, where = -math.inf, -1
                    for r in rows:  # row-major scan; strict > keeps the first maximum
                        for q in cols:
                            if x[a, b, r, q] > best:
                                best, where = x[a, b, r, q], r * w + q
                    out[a, b, y, z], idx[a, b, y, z] = best, where
    return out, idx


def avg_pool_loops(x, cfg, count_include_pad, divisor_override=None):
    """PyTorch's definition: window clipped to the padded input for the divisor, to the input for the sum."""
    n, c, h, w = x.shape
    oh, ow = cfg.output_shape[2:]
    (kh, kw), (sh, sw), (ph, pw) = cfg.kernel_size, cfg.stride, cfg.padding
    out = np.empty((n, c, oh, ow))
    for y in range(oh):
        for z in range(ow):
            h0, w0 = y * sh - ph, z * sw - pw
            h1, w1 = min(h0 + kh, h + ph), min(w0 + kw, w + pw)
            size_with_pad = (h1 - h0) * (w1 - w0)
            h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, h), min(w1, w)
            total = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3))
            if divisor_override:
                divisor = divisor_override
            elif count_include_pad:
                divisor = size_with_pad
            else:
                divisor = (h1 - h0) * (w1 - w0)
            out[:, :, y, z] = total / divisor
    return out


def adaptive_loops(x, out_size, reduce):
    n, c, h, w = x.shape
    oh, ow = out_size
    out = np.empty((n, c, oh, ow))
    for y in range(oh):
        for z in range(ow):
            h0, h1 = (y * h) // oh, math.ceil((y + 1) * h / oh)
            w0, w1 = (z * w) // ow, math.ceil((z + 1) * w / ow)
            out[:, :, y, z] = reduce(x[:, :, h0:h1, w0:w1], axis=(2, 3))
    return out


def _args(cfg):
    return cfg.kernel_size, cfg.stride, cfg.padding


# ---------------------------------------------------------------------------------------- max pool


@settings(FIXTURE_OK, max_examples=60)
@given(pool_configs(), st.integers(0, 2**16))
def test_max_pool_matches_loop_oracle(device, cfg, seed):
    x = np.random.default_rng(seed).standard_normal(cfg.input_shape)
    y, idx = max_pool2d(_t(x, device), *_args(cfg), cfg.dilation, cfg.ceil_mode, return_indices=True)
    expected, expected_idx = max_pool_loops(x, cfg)
    assert y.shape == cfg.output_shape
    np.testing.assert_array_equal(to_numpy(y.data), expected)
    np.testing.assert_array_equal(to_numpy(idx.data), expected_idx)
    assert idx.dtype == np.int64 and not idx.requires_grad


@settings(FIXTURE_OK, max_examples=40)
@given(st.data())
def test_max_pool_gradcheck_without_ties(device, data):
    cfg = data.draw(pool_configs(max_size=5))
    x = data.draw(arrays_without_ties(cfg.input_shape))
    t = _t(x, device, True)
    assert mr.gradcheck(lambda a: max_pool2d(a, *_args(cfg), cfg.dilation, cfg.ceil_mode), [t])


def test_max_pool_ties_send_the_gradient_to_the_first_maximum(device):
    """PyTorch's convention: on ties the whole gradient goes to the first maximum (row-major)."""
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = x[0, 0, 1, 0] = 5.0  # tie inside the top-left window: (1, 0) comes first
    t = _t(x, device, True)
    y, idx = max_pool2d(t, 2, return_indices=True)
    y.sum().backward()
    expected = np.zeros((4, 4))
    expected[1, 0] = 1.0  # the first 5
    expected[0, 2] = expected[2, 0] = expected[2, 2] = 1.0  # all-zero windows: their first element
    np.testing.assert_array_equal(to_numpy(t.grad.data)[0, 0], expected)
    np.testing.assert_array_equal(to_numpy(idx.data)[0, 0], [[4, 2], [8, 10]])


def test_max_pool_overlapping_windows_accumulate(device):
    x = np.array([[[[0.0, 1.0, 9.0, 2.0, 0.5]]]])
    t = _t(x, device, True)
    max_pool2d(t, (1, 3), stride=1).sum().backward()  # the 9 wins all three windows
    np.testing.assert_array_equal(to_numpy(t.grad.data)[0, 0, 0], [0, 0, 3, 0, 0])


def test_max_pool_padding_is_minus_infinity(device):
    x = -np.ones((1, 1, 2, 2))
    y = max_pool2d(_t(x, device), 3, stride=1, padding=1)
    np.testing.assert_array_equal(to_numpy(y.data), -np.ones((1, 1, 2, 2)))


def test_max_pool_propagates_nan(device):
    x = np.array([[[[1.0, np.nan], [3.0, 2.0]]]])
    assert np.isnan(to_numpy(max_pool2d(_t(x, device), 2).data)).all()


# ---------------------------------------------------------------------------------------- avg pool


@settings(FIXTURE_OK, max_examples=60)
@given(pool_configs(allow_dilation=False), st.booleans(), st.sampled_from([None, 1, 3]), st.integers(0, 2**16))
def test_avg_pool_matches_loop_oracle(device, cfg, count_include_pad, divisor_override, seed):
    x = np.random.default_rng(seed).standard_normal(cfg.input_shape)
    y = avg_pool2d(_t(x, device), *_args(cfg), cfg.ceil_mode, count_include_pad, divisor_override)
    assert y.shape == cfg.output_shape
    np.testing.assert_allclose(to_numpy(y.data), avg_pool_loops(x, cfg, count_include_pad, divisor_override), rtol=1e-12, atol=1e-12)


@settings(FIXTURE_OK, max_examples=40)
@given(pool_configs(max_size=5, allow_dilation=False), st.booleans(), st.integers(0, 2**16))
def test_avg_pool_gradcheck(device, cfg, count_include_pad, seed):
    t = _t(np.random.default_rng(seed).standard_normal(cfg.input_shape), device, True)
    assert mr.gradcheck(lambda a: avg_pool2d(a, *_args(cfg), cfg.ceil_mode, count_include_pad), [t])


def test_avg_pool_ceil_mode_divisor_as_pytorch(device):
    """5 wide, kernel 2, stride 2, ceil_mode: the last window holds one real pixel and divides by 1."""
    x = np.arange(1.0, 6.0).reshape(1, 1, 1, 5)  # 1..5: no zero, so a counted pad pixel changes the mean
    y = avg_pool2d(_t(x, device), (1, 2), stride=(1, 2), ceil_mode=True)
    np.testing.assert_allclose(to_numpy(y.data)[0, 0, 0], [1.5, 3.5, 5.0])
    # with padding 1 and count_include_pad the left window counts its pad pixel: (0 + 1) / 2
    y = avg_pool2d(_t(x, device), (1, 2), stride=(1, 2), padding=(0, 1))
    np.testing.assert_allclose(to_numpy(y.data)[0, 0, 0], [0.5, 2.5, 4.5])
    # without it the pad pixel is left out of the divisor too: 1 / 1
    y = avg_pool2d(_t(x, device), (1, 2), stride=(1, 2), padding=(0, 1), count_include_pad=False)
    np.testing.assert_allclose(to_numpy(y.data)[0, 0, 0], [1.0, 2.5, 4.5])


# ----------------------------------------------------------------------------------- adaptive pools

OUTPUT_SIZES = st.one_of(
    st.integers(1, 7),
    st.tuples(st.one_of(st.none(), st.integers(1, 7)), st.one_of(st.none(), st.integers(1, 7))),
)


def _resolve(output_size, shape):
    pair = (output_size, output_size) if output_size is None or isinstance(output_size, int) else output_size
    return tuple(shape[2 + d] if s is None else s for d, s in enumerate(pair))


@settings(FIXTURE_OK, max_examples=50)
@given(st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)), OUTPUT_SIZES, st.integers(0, 2**16))
def test_adaptive_avg_pool_matches_loop_oracle(device, shape, output_size, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    y = adaptive_avg_pool2d(_t(x, device), output_size)
    expected = adaptive_loops(x, _resolve(output_size, shape), np.mean)
    assert y.shape == expected.shape
    np.testing.assert_allclose(to_numpy(y.data), expected, rtol=1e-12, atol=1e-12)


@settings(FIXTURE_OK, max_examples=50)
@given(st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)), OUTPUT_SIZES, st.integers(0, 2**16))
def test_adaptive_max_pool_matches_loop_oracle(device, shape, output_size, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    y, idx = adaptive_max_pool2d(_t(x, device), output_size, return_indices=True)
    out_size = _resolve(output_size, shape)
    expected = adaptive_loops(x, out_size, np.max)
    np.testing.assert_array_equal(to_numpy(y.data), expected)
    flat = x.reshape(shape[0], shape[1], -1)
    np.testing.assert_array_equal(
        np.take_along_axis(flat, to_numpy(idx.data).reshape(shape[0], shape[1], -1), axis=2).reshape(y.shape), expected
    )


@settings(FIXTURE_OK, max_examples=30)
@given(st.data())
def test_adaptive_pools_gradcheck(device, data):
    shape = data.draw(st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 6), st.integers(1, 6)))
    output_size = data.draw(OUTPUT_SIZES)
    t = _t(data.draw(float_arrays(shape)), device, True)
    assert mr.gradcheck(lambda a: adaptive_avg_pool2d(a, output_size), [t])
    u = _t(data.draw(arrays_without_ties(shape)), device, True)
    assert mr.gradcheck(lambda a: adaptive_max_pool2d(a, output_size), [u])


def test_global_average_pool(device):
    x = np.random.default_rng(0).standard_normal((3, 4, 5, 6))
    t = _t(x, device, True)
    y = adaptive_avg_pool2d(t, 1)
    assert y.shape == (3, 4, 1, 1)
    np.testing.assert_allclose(to_numpy(y.data)[..., 0, 0], x.mean(axis=(2, 3)))
    y.sum().backward()
    np.testing.assert_allclose(to_numpy(t.grad.data), np.full(x.shape, 1 / 30))


def test_adaptive_max_pool_ties_go_to_the_first_maximum(device):
    t = _t(np.ones((1, 1, 3, 3)), device, True)
    y, idx = adaptive_max_pool2d(t, 1, return_indices=True)
    y.sum().backward()
    assert int(to_numpy(idx.data).ravel()[0]) == 0
    assert to_numpy(t.grad.data)[0, 0, 0, 0] == 1.0 and to_numpy(t.grad.data).sum() == 1.0


# ------------------------------------------------------------------------------ dtypes, shapes, errors


@settings(FIXTURE_OK, max_examples=20)
@given(pool_configs(allow_dilation=False), st.integers(0, 2**16))
def test_float32_agrees_with_float64(device, cfg, seed):
    """Pools only compare and average a handful of values: float32 within 1e-6 relative."""
    x = np.random.default_rng(seed).standard_normal(cfg.input_shape)
    for fn in (
        lambda a: max_pool2d(a, *_args(cfg), 1, cfg.ceil_mode),
        lambda a: avg_pool2d(a, *_args(cfg), cfg.ceil_mode),
        lambda a: adaptive_avg_pool2d(a, (2, 3)),
        lambda a: adaptive_max_pool2d(a, (3, 2)),
    ):
        y64, y32 = fn(_t(x, device)), fn(_t(x.astype(np.float32), device))
        assert y32.dtype == np.float32
        np.testing.assert_allclose(to_numpy(y32.data), to_numpy(y64.data), rtol=1e-6, atol=1e-6)


def test_unbatched_inputs(device):
    x = np.random.default_rng(0).standard_normal((2, 4, 4))
    assert max_pool2d(_t(x, device), 2).shape == (2, 2, 2)
    values, idx = max_pool2d(_t(x, device), 2, return_indices=True)
    assert idx.shape == (2, 2, 2)
    assert avg_pool2d(_t(x, device), 2).shape == (2, 2, 2)
    assert adaptive_avg_pool2d(_t(x, device), 3).shape == (2, 3, 3)
    assert adaptive_max_pool2d(_t(x, device), (None, 3)).shape == (2, 4, 3)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda x: max_pool2d(x, 2, padding=2), r"max_pool2d: padding \(2, 2\) must be at most half of kernel_size \(2, 2\)"),
        (lambda x: avg_pool2d(x, 3, padding=(1, 2)), r"avg_pool2d: padding \(1, 2\) must be at most half"),
        (
            lambda x: max_pool2d(x, 7),
            r"max_pool2d: input size \(5, 5\) \(padded \(5, 5\)\) is smaller than the dilated kernel \(7, 7\)",
        ),
        (lambda x: max_pool2d(x, 3, dilation=3), r"smaller than the dilated kernel \(7, 7\)"),
        (lambda x: max_pool2d(x, 0), r"max_pool2d: kernel_size must be >= 1"),
        (lambda x: max_pool2d(x, 2, stride=0), r"max_pool2d: stride must be >= 1"),
        (lambda x: max_pool2d(x.reshape(5, 5), 2), r"max_pool2d: expected a 4-D input"),
        (lambda x: avg_pool2d(x, 2, divisor_override=0), r"avg_pool2d: divisor_override must be a nonzero int"),
        (lambda x: adaptive_avg_pool2d(x, 0), r"adaptive_avg_pool2d: output_size must be positive"),
        (lambda x: adaptive_max_pool2d(x, (1, 2, 3)), r"adaptive_max_pool2d: output_size must be an int, None or a pair"),
        (lambda x: adaptive_avg_pool2d(x.reshape(25), 1), r"adaptive_avg_pool2d: expected a 4-D input"),
    ],
)
def test_errors(device, call, match):
    with pytest.raises(ValueError, match=match):
        call(mr.zeros((1, 1, 5, 5), device=device))


def test_integer_input_is_refused(device):
    with pytest.raises(TypeError, match=r"max_pool2d: expected a floating-point tensor"):
        max_pool2d(mr.zeros((1, 1, 4, 4), device=device).long(), 2)


# ------------------------------------------------------------------------- optional PyTorch parity


@settings(max_examples=25)
@given(pool_configs(), st.booleans(), st.integers(0, 2**16))
def test_matches_torch(cfg, count_include_pad, seed):
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    x = np.random.default_rng(seed).standard_normal(cfg.input_shape)
    cases = [
        (
            lambda a: max_pool2d(a, *_args(cfg), cfg.dilation, cfg.ceil_mode),
            lambda a: functional.max_pool2d(a, *_args(cfg), cfg.dilation, cfg.ceil_mode),
        ),
        (lambda a: adaptive_avg_pool2d(a, (3, 2)), lambda a: functional.adaptive_avg_pool2d(a, (3, 2))),
        (lambda a: adaptive_max_pool2d(a, (2, 3)), lambda a: functional.adaptive_max_pool2d(a, (2, 3))),
    ]
    if cfg.dilation == (1, 1):
        cases.append(
            (
                lambda a: avg_pool2d(a, *_args(cfg), cfg.ceil_mode, count_include_pad),
                lambda a: functional.avg_pool2d(a, *_args(cfg), cfg.ceil_mode, count_include_pad),
            )
        )
    for ours, theirs in cases:
        m, t = mr.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        my, ty = ours(m), theirs(t)
        grad = np.random.default_rng(seed + 2).standard_normal(my.shape)
        my.backward(mr.tensor(grad))
        ty.backward(torch.tensor(grad))
        np.testing.assert_allclose(my.numpy(), ty.detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(m.grad.numpy(), t.grad.numpy(), atol=1e-12)
