"""The CUDA kernels' logic, run on the CPU: the kernel source built with g++ (tests/cuda_host.py) against NumPy.

The references are the generic NumPy code of the ops (``conv._im2col`` / ``conv._col2im``) and BatchNorm's
formulas written in float64 NumPy. Shapes, strides, paddings (also uneven), dilations, memory layouts,
dtypes and the emulated grid (blocks x threads, so each thread strides over several elements) are drawn
by hypothesis. Index arithmetic past 2^31 is tested through the index helpers themselves, called from a
tiny host wrapper with 64-bit-sized geometry (nothing huge is allocated).
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from cuda_host import HostLauncher, build, host_kernels
from hypothesis import given
from hypothesis import strategies as st
from kernel_toolchains import require_host_compiler

import minires.testing as mt
from minires.backend import to_device, to_numpy
from minires.ops import conv
from minires.ops.cuda import launch, sources
from minires.ops.geometry import Window2d, output_length

DTYPES = [name for name, *_ in sources.DTYPES]
TOLERANCE = {"float16": dict(rtol=2e-3, atol=2e-3), "float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-12)}


@pytest.fixture(autouse=True)
def _compiler() -> None:
    require_host_compiler()


grids = st.tuples(st.integers(1, 4), st.integers(1, 9))  # (blocks, threads): small, so threads stride


@st.composite
def conv_geometries(draw: st.DrawFn) -> tuple[tuple[int, int, int, int], Window2d]:
    """(input shape, window), valid by construction; the bottom/right pads may exceed the top/left ones
    (uneven "same" padding)."""
    cfg = draw(mt.conv_configs(max_batch=3, max_channels=5, max_groups=1, max_size=9, max_kernel=4, max_dilation=3))
    extra = draw(st.tuples(st.integers(0, 1), st.integers(0, 1)))
    (ph, pw) = cfg.padding
    pads = (ph, ph + extra[0], pw, pw + extra[1])
    return cfg.input_shape, Window2d(cfg.input_shape[2:], cfg.kernel_size, cfg.stride, pads, cfg.dilation)


def _upload(a: np.ndarray, channels_last: bool = False):
    """A foreign-device copy of ``a`` with NCHW or channels-last memory (an upload itself is C-ordered)."""
    return launch.in_layout(to_device(a, "foreign"), channels_last)


@given(geometry=conv_geometries(), dtype=st.sampled_from(DTYPES), grid=grids, channels_last=st.booleans(), seed=st.integers(0, 2**16))
def test_im2col_kernel_matches_numpy(geometry, dtype, grid, channels_last, seed) -> None:
    shape, window = geometry
    x = np.random.default_rng(seed).normal(size=shape).astype(dtype)
    with host_kernels(HostLauncher(*grid)):
        cols = to_numpy(launch.im2col(_upload(x, channels_last), window))
    np.testing.assert_array_equal(cols, conv._im2col(x, window))


@given(geometry=conv_geometries(), dtype=st.sampled_from(DTYPES), grid=grids, seed=st.integers(0, 2**16))
def test_col2im_kernel_matches_numpy(geometry, dtype, grid, seed) -> None:
    shape, window = geometry
    (oh, ow), (kh, kw) = window.output_size, window.kernel
    cols = np.random.default_rng(seed).normal(size=(shape[0] * oh * ow, kh * kw * shape[1])).astype(dtype)
    with host_kernels(HostLauncher(*grid)):
        img = to_numpy(launch.col2im(_upload(cols), shape, window))
    want = conv._col2im(cols.astype(np.float64), shape, window)
    np.testing.assert_allclose(img.astype(np.float64), want, **TOLERANCE[dtype])


bn_shapes = st.tuples(st.integers(1, 3), st.integers(1, 5)).flatmap(
    lambda nc: st.lists(st.integers(1, 5), min_size=0, max_size=2).map(lambda spatial: (*nc, *spatial))
)


def _per_channel(rng: np.random.Generator, c: int, n: int) -> list[np.ndarray]:
    return [rng.normal(size=c) for _ in range(n)]


def _col(v: np.ndarray, ndim: int) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


@given(
    shape=bn_shapes, dtype=st.sampled_from(DTYPES), grid=grids, layouts=st.tuples(st.booleans(), st.booleans()),
    residual=st.booleans(), relu=st.booleans(), seed=st.integers(0, 2**16),
)
def test_bn_forward_kernel_matches_numpy(shape, dtype, grid, layouts, residual, relu, seed) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(dtype)
    res = rng.normal(size=shape).astype(dtype) if residual else None
    mean, scale, bias = _per_channel(rng, shape[1], 3)
    with host_kernels(HostLauncher(*grid)):
        xd = _upload(x, layouts[0])
        resd = None if res is None else _upload(res, layouts[1])
        y = launch.bn_forward(xd, _upload(mean), _upload(scale), _upload(bias), resd, relu)
        kept_layout = launch.is_channels_last(y) == launch.is_channels_last(xd)  # the output keeps x's memory layout
        got = to_numpy(y)
    acc = np.float64 if dtype == "float64" else np.float32  # the kernel's coefficients are in its accumulator type
    mean, scale, bias = (_col(v.astype(acc).astype(np.float64), x.ndim) for v in (mean, scale, bias))
    want = (x.astype(np.float64) - mean) * scale + bias
    if res is not None:
        want += res
    if relu:
        want = np.maximum(want, 0)
    assert got.dtype == x.dtype and got.shape == x.shape
    assert kept_layout
    np.testing.assert_allclose(got.astype(np.float64), want, **TOLERANCE[dtype])


@given(
    shape=bn_shapes, dtype=st.sampled_from(DTYPES), grid=grids, layouts=st.tuples(st.booleans(), st.booleans()),
    seed=st.integers(0, 2**16),
)
def test_bn_backward_kernel_matches_numpy(shape, dtype, grid, layouts, seed) -> None:
    rng = np.random.default_rng(seed)
    x, g = rng.normal(size=shape).astype(dtype), rng.normal(size=shape).astype(dtype)
    mean, k, mean_g, proj = _per_channel(rng, shape[1], 4)
    with host_kernels(HostLauncher(*grid)):
        xd = _upload(x, layouts[0])
        dx = launch.bn_backward(_upload(g, layouts[1]), xd, *(_upload(v) for v in (mean, k, mean_g, proj)))
        kept_layout = launch.is_channels_last(dx) == launch.is_channels_last(xd)
        got = to_numpy(dx)
    acc = np.float64 if dtype == "float64" else np.float32
    mean, k, mean_g, proj = (_col(v.astype(acc).astype(np.float64), x.ndim) for v in (mean, k, mean_g, proj))
    want = k * (g.astype(np.float64) - mean_g - (x.astype(np.float64) - mean) * proj)
    assert got.dtype == x.dtype and kept_layout
    np.testing.assert_allclose(got.astype(np.float64), want, **TOLERANCE[dtype])


def test_float16_conversions_round_to_nearest_even_as_numpy() -> None:
    """Every float16 bit pattern survives the shim's load/store, and float32 values round as numpy does."""
    bits = np.arange(2**16, dtype=np.uint16)
    finite = bits[np.isfinite(bits.view(np.float16))]
    x = finite.view(np.float16).reshape(1, -1, 1)
    with host_kernels():
        zeros, ones, minus_zeros = (to_device(np.full(x.shape[1], v), "foreign") for v in (0.0, 1.0, -0.0))
        y = to_numpy(launch.bn_forward(to_device(x, "foreign"), zeros, ones, minus_zeros))  # (x - 0) * 1 + (-0) == x, bit for bit
    np.testing.assert_array_equal(y.view(np.uint16), finite.reshape(x.shape))
    # the store rounds to the nearer float16 (ties to even), as numpy's cast: x * 1/3 computed in float32
    x16 = np.random.default_rng(0).normal(scale=100, size=(1, 4096, 1)).astype(np.float16)
    third = np.full(4096, 1 / 3)
    with host_kernels():
        zeros = to_device(np.zeros(4096), "foreign")
        y = to_numpy(launch.bn_forward(to_device(x16, "foreign"), zeros, to_device(third, "foreign"), zeros))
    want = (x16.astype(np.float32) * np.float32(1 / 3)).astype(np.float16)
    np.testing.assert_array_equal(y, want)


# -- index arithmetic near and past 2^31 -----------------------------------------------------------------
_INDEX_WRAPPERS = r"""
extern "C" long long test_im2col_source_index(long long i, const long long* p) {
    const ConvGeometry g = {p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12]};
    return im2col_source_index(i, g);
}
extern "C" long long test_col2im_column_index(const long long* at, const long long* p) {
    const ConvGeometry g = {p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12]};
    return col2im_column_index(at[0], at[1], at[2], at[3], at[4], at[5], g);
}
"""
_CHANNEL_WRAPPER = r"""
extern "C" long long test_channel_of(long long i, long long channels, long long inner) { return channel_of(i, channels, inner); }
"""


def _index_library() -> ctypes.CDLL:
    lib = build(sources.IM2COL, _INDEX_WRAPPERS)
    for name in ("test_im2col_source_index", "test_col2im_column_index"):
        getattr(lib, name).restype = ctypes.c_longlong
    return lib


def _params(values) -> ctypes.Array:
    return (ctypes.c_longlong * len(values))(*values)


@st.composite
def big_geometries(draw: st.DrawFn) -> tuple[int, ...]:
    """Geometry (C, H, W, oH, oW, kH, kW, sH, sW, pT, pL, dH, dW) whose column count N*oH*oW*kH*kW*C is
    past 2^31, and an N; the output sizes come from the geometry module."""
    c = draw(st.integers(64, 2048))
    h, w = draw(st.integers(500, 4000)), draw(st.integers(500, 4000))
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pt, pl = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    oh, ow = output_length(h, kh, sh, pt, pt, dh), output_length(w, kw, sw, pl, pl, dw)
    n = 2**31 // (oh * ow * kh * kw * c) + draw(st.integers(1, 64))  # enough images to pass 2^31 columns
    return (n, c, h, w, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw)


@given(geometry=big_geometries(), where=st.floats(0, 1), near_end=st.booleans())
def test_im2col_source_index_past_2_to_the_31(geometry, where, near_end) -> None:
    n, c, h, w, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw = geometry
    col_shape = (n, oh, ow, kh, kw, c)
    total = int(np.prod(col_shape, dtype=object))
    assert total > 2**31
    i = total - 1 - int(where * 1000) if near_end else int(where * (total - 1))
    lib = _index_library()
    got = lib.test_im2col_source_index(ctypes.c_longlong(i), _params(geometry[1:]))
    # independent reference: numpy's unravel/ravel over the 6-D column index and the 4-D NHWC input
    b, oy, ox, ki, kj, ch = (int(v) for v in np.unravel_index(i, col_shape))
    y, x = oy * sh - pt + ki * dh, ox * sw - pl + kj * dw
    want = int(np.ravel_multi_index((b, y, x, ch), (n, h, w, c))) if 0 <= y < h and 0 <= x < w else -1
    assert got == want


@given(geometry=big_geometries(), position=st.tuples(*(st.floats(0, 1) for _ in range(6))))
def test_col2im_column_index_past_2_to_the_31(geometry, position) -> None:
    n, c, h, w, oh, ow, kh, kw, *_ = geometry
    col_shape = (n, oh, ow, kh, kw, c)
    at = [min(int(f * size), size - 1) for f, size in zip(position, col_shape)]
    lib = _index_library()
    got = lib.test_col2im_column_index(_params(at), _params(geometry[1:]))
    assert got == int(np.ravel_multi_index(at, col_shape))


@given(
    extra=st.integers(1, 512), c=st.integers(1, 4096), spatial=st.integers(1, 10**6), channels_last=st.booleans(),
    where=st.floats(0, 1),
)
def test_bn_channel_index_past_2_to_the_31(extra, c, spatial, channels_last, where) -> None:
    n = 2**31 // (c * spatial) + extra
    shape = (n, spatial, c) if channels_last else (n, c, spatial)
    total = n * c * spatial
    assert total > 2**31
    i = int(where * (total - 1))
    lib = build(sources.BATCH_NORM, _CHANNEL_WRAPPER)
    lib.test_channel_of.restype = ctypes.c_longlong
    got = lib.test_channel_of(ctypes.c_longlong(i), ctypes.c_longlong(c), ctypes.c_longlong(1 if channels_last else spatial))
    assert got == int(np.unravel_index(i, shape)[2 if channels_last else 1])


def test_index_tests_reach_past_2_to_the_31() -> None:
    """The big-geometry strategy really produces column counts past 2^31 (guarding the tests above)."""
    sizes = []

    @given(big_geometries())
    def collect(geometry) -> None:
        n, c, _, _, oh, ow, kh, kw, *_ = geometry
        sizes.append(n * oh * ow * kh * kw * c)

    collect()
    assert min(sizes) > 2**31 and max(sizes) > 2**40
