"""CuPy kernels: im2col / col2im (gather, deterministic), fused BatchNorm(+ReLU)(+residual) and its backward.

Each function takes and returns cupy arrays and matches a generic reference bit-for-bit in layout and
to rounding in value: :func:`minires.ops.conv.im2col` / :func:`~minires.ops.conv.col2im` and
:func:`minires.ops.normalization.batch_norm` (+ ``relu``). Kernels compile on first use (CuPy caches
them on disk). UNVERIFIED: written without a GPU; tests/test_cuda_kernels.py checks them on one.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


def _cupy() -> Any:
    import cupy

    return cupy


def _acc(dtype: Any) -> str:
    """The C accumulator type: double for float64, float otherwise (float16 sums in float32)."""
    return "double" if np.dtype(dtype) == np.float64 else "float"


@functools.cache
def _im2col_kernel() -> Any:
    # One thread per column element; the channel is innermost, so neighbouring threads read
    # neighbouring channels of one pixel of the channels-last input (coalesced).
    return _cupy().ElementwiseKernel(
        "raw T x, int64 C, int64 H, int64 W, int64 oH, int64 oW, int64 kH, int64 kW, "
        "int64 sH, int64 sW, int64 pT, int64 pL, int64 dH, int64 dW",
        "T col",
        """
        long long t = i;
        const long long c = t % C; t /= C;
        const long long kj = t % kW; t /= kW;
        const long long ki = t % kH; t /= kH;
        const long long ox = t % oW; t /= oW;
        const long long oy = t % oH; const long long n = t / oH;
        const long long y = oy * sH - pT + ki * dH;
        const long long xx = ox * sW - pL + kj * dW;
        if (y >= 0 && y < H && xx >= 0 && xx < W) {
            col = x[((n * H + y) * W + xx) * C + c];
        } else {
            col = (T)(0.0f);
        }
        """,
        "minires_im2col_nhwc",
    )


@functools.cache
def _col2im_kernel(acc: str) -> Any:
    # A gather: one thread per input pixel and channel sums the column entries that read it, in a
    # fixed (ki, kj) order -> deterministic, no atomics.
    return _cupy().ElementwiseKernel(
        "raw T cols, int64 C, int64 H, int64 W, int64 oH, int64 oW, int64 kH, int64 kW, "
        "int64 sH, int64 sW, int64 pT, int64 pL, int64 dH, int64 dW",
        "T img",
        f"""
        long long t = i;
        const long long c = t % C; t /= C;
        const long long xx = t % W; t /= W;
        const long long y = t % H; const long long n = t / H;
        {acc} total = 0;
        for (long long ki = 0; ki < kH; ++ki) {{
            const long long yy = y + pT - ki * dH;
            if (yy < 0 || yy % sH != 0) continue;
            const long long oy = yy / sH;
            if (oy >= oH) continue;
            for (long long kj = 0; kj < kW; ++kj) {{
                const long long xs = xx + pL - kj * dW;
                if (xs < 0 || xs % sW != 0) continue;
                const long long ox = xs / sW;
                if (ox >= oW) continue;
                total += ({acc})cols[((n * oH + oy) * oW + ox) * (kH * kW * C) + (ki * kW + kj) * C + c];
            }}
        }}
        img = (T)total;
        """,
        f"minires_col2im_gather_{acc}",
    )


def _out_size(size: int, k: int, s: int, p0: int, p1: int, d: int) -> int:
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


def im2col(x: Any, kernel: tuple[int, int], stride: tuple[int, int], pads: tuple[int, int, int, int],
           dilation: tuple[int, int]) -> Any:
    """(N, C, H, W) cupy -> (N*oH*oW, kH*kW*C), the layout of :func:`minires.ops.conv.im2col`."""
    cp = _cupy()
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    pt, pb, pl, pr = pads
    oh, ow = _out_size(h, kh, sh, pt, pb, dh), _out_size(w, kw, sw, pl, pr, dw)
    nhwc = cp.ascontiguousarray(x.transpose(0, 2, 3, 1))  # no copy when x is channels-last already
    cols = cp.empty((n * oh * ow, kh * kw * c), dtype=x.dtype)
    _im2col_kernel()(nhwc, c, h, w, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, cols)
    return cols


def col2im(cols: Any, input_shape: tuple[int, int, int, int], kernel: tuple[int, int], stride: tuple[int, int],
           pads: tuple[int, int, int, int], dilation: tuple[int, int]) -> Any:
    """(N*oH*oW, kH*kW*C) cupy -> (N, C, H, W) as a channels-last view, as :func:`minires.ops.conv.col2im`."""
    cp = _cupy()
    n, c, h, w = input_shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    pt, pb, pl, pr = pads
    oh, ow = _out_size(h, kh, sh, pt, pb, dh), _out_size(w, kw, sw, pl, pr, dw)
    cols = cp.ascontiguousarray(cols)
    img = cp.empty((n, h, w, c), dtype=cols.dtype)
    _col2im_kernel(_acc(cols.dtype))(cols, c, h, w, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, img)
    return img.transpose(0, 3, 1, 2)


# -- BatchNorm ------------------------------------------------------------------------------------
@functools.cache
def _bn_act_kernel(relu: bool, residual: bool) -> Any:
    args = "T x, float32 scale, float32 shift" + (", T res" if residual else "")
    body = "float v = (float)x * scale + shift;" + (" v += (float)res;" if residual else "")
    body += (" y = (T)(v > 0.0f ? v : 0.0f);" if relu else " y = (T)v;")
    name = f"minires_bn{'_relu' if relu else ''}{'_add' if residual else ''}"
    return _cupy().ElementwiseKernel(args, "T y", body, name)


def _channel(v: Any, ndim: int) -> Any:
    return v.astype(np.float32, copy=False).reshape((1, -1) + (1,) * (ndim - 2))


def bn_act(x: Any, scale: Any, shift: Any, residual: Any = None, relu: bool = True) -> Any:
    """``relu(x * scale[c] + shift[c] (+ residual))`` in one pass: eval-mode BN (+add)(+ReLU) with
    ``scale = weight / sqrt(running_var + eps)``, ``shift = bias - running_mean * scale``."""
    kernel = _bn_act_kernel(bool(relu), residual is not None)
    args = (x, _channel(scale, x.ndim), _channel(shift, x.ndim)) + ((residual,) if residual is not None else ())
    return kernel(*args)


def bn_train_forward(x: Any, weight: Any, bias: Any, eps: float, relu: bool = False,
                     residual: Any = None) -> tuple[Any, Any, Any, Any]:
    """Training BN on (N, C, *spatial): returns (y, batch mean, biased var, invstd), statistics in float32.

    The statistics are CuPy reductions in float32; normalise + affine (+ residual) (+ ReLU) is one kernel.
    """
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, dtype=np.float32)
    var = x.var(axis=axes, dtype=np.float32)
    invstd = 1.0 / _cupy().sqrt(var + np.float32(eps))
    scale = invstd if weight is None else weight.astype(np.float32) * invstd
    shift = -mean * scale if bias is None else bias.astype(np.float32) - mean * scale
    return bn_act(x, scale, shift, residual, relu), mean, var, invstd


@functools.cache
def _bn_backward_kernels() -> tuple[Any, Any]:
    cp = _cupy()
    dot = cp.ReductionKernel(
        "T g, T x, float32 mean", "float32 out", "(float)g * ((float)x - mean)", "a + b", "out = a", "0",
        "minires_bn_grad_dot",
    )
    dx = cp.ElementwiseKernel(
        "T g, T x, float32 mean, float32 k, float32 mean_g, float32 proj",
        "T dx",
        "dx = (T)(k * ((float)g - mean_g - ((float)x - mean) * proj));",
        "minires_bn_dx",
    )
    return dot, dx


def bn_train_backward(g: Any, x: Any, mean: Any, invstd: Any, weight: Any) -> tuple[Any, Any, Any]:
    """Gradients of training BN: (dx, dweight, dbias) from dL/dy ``g`` and the forward's statistics.

    ``dx = w*invstd * (g - mean(g) - xhat * mean(g*xhat))`` with one reduction pass for sum(g) and one
    fused reduction for sum(g*(x-mean)), then one elementwise kernel.
    """
    axes = (0,) + tuple(range(2, x.ndim))
    m = x.size // x.shape[1]
    dot, dx_kernel = _bn_backward_kernels()
    sum_g = g.sum(axis=axes, dtype=np.float32)
    sum_gd = dot(g, x, _channel(mean, x.ndim), axis=axes)
    w = 1.0 if weight is None else weight.astype(np.float32)
    k = w * invstd
    proj = sum_gd * invstd * invstd / m
    dx = dx_kernel(g, x, _channel(mean, x.ndim), _channel(k, x.ndim), _channel(sum_g / m, x.ndim), _channel(proj, x.ndim))
    dweight = sum_gd * invstd
    return dx, dweight, sum_g


__all__ = ["bn_act", "bn_train_backward", "bn_train_forward", "col2im", "im2col"]
