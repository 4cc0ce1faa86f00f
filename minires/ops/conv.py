"""2-D convolution on im2col + GEMM, with :func:`im2col` and :func:`col2im` public for learners.

Column layout (chosen for speed on CPU BLAS; see ``benchmarks/conv_layers.py``)::

    cols[(n, oh, ow), (i, j, c)] = x_padded[n, c, oh*sH + i*dH, ow*sW + j*dW]
    cols.shape == (N*oH*oW, kH*kW*C)        # rows: output pixels; columns: kernel offset, then channel

Rows are output pixels in NHWC order and the channel is the innermost column index, so the copy
that builds ``cols`` reads runs of C contiguous values from a channels-last (NHWC) copy of the
input: no transposing copy of the big column matrix is ever made. The convolution is then one
GEMM per group, ``out (N*oH*oW, O) = cols @ W2.T`` with ``W2 = weight.transpose(0, 2, 3, 1)
.reshape(O, kH*kW*C)`` (a small copy of the weight, not of the columns). Backward reuses the
saved columns: ``dW2 = dout.T @ cols`` and ``dcols = dout @ W2``, and :func:`col2im` adds the
kH*kW column blocks back onto the input, one strided slice per kernel offset.

The output (N, O, oH, oW) is returned as a *channels-last view* of the GEMM result (the same
memory format as PyTorch's ``channels_last``): its values and shape are NCHW, but its memory is
NHWC, which saves a transposing copy here and makes the next layer's im2col read contiguous
memory. Elementwise ops keep that layout; anything that needs C-contiguous memory copies it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from minires.amp import cast_to_compute
from minires.autograd.function import Context, Function
from minires.backend import xp_of
from minires.ops._util import as_tensor, check_float
from minires.ops.cuda import kernels as cuda_kernels
from minires.ops.cuda import use_fast_kernels
from minires.tensor import Tensor

IntPair = int | tuple[int, int]


def _pair(name: str, what: str, value: Any, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints as a pair, each at least ``minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{name}: {what} must be an int or a pair of ints, got {value!r}")
    try:
        pair = (int(value), int(value)) if not hasattr(value, "__len__") else tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: {what} must be an int or a pair of ints, got {value!r}") from None
    if len(pair) == 1:
        pair = (pair[0], pair[0])
    if len(pair) != 2:
        raise ValueError(f"{name}: {what} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name}: {what} must be >= {minimum}, got {value!r}")
    return pair  # type: ignore[return-value]


def _output_size(
    name: str,
    size: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilation: tuple[int, int],
) -> tuple[int, int]:
    """PyTorch's output-size rule; raises when the padded input is smaller than the dilated kernel."""
    padded = (size[0] + pads[0] + pads[1], size[1] + pads[2] + pads[3])
    reach = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
    if padded[0] < reach[0] or padded[1] < reach[1]:
        raise ValueError(
            f"{name}: input size {size} (padded {padded}) is smaller than the dilated kernel {reach} "
            f"(kernel {kernel}, dilation {dilation})"
        )
    return ((padded[0] - reach[0]) // stride[0] + 1, (padded[1] - reach[1]) // stride[1] + 1)


def _pads(padding: tuple[int, int]) -> tuple[int, int, int, int]:
    """Symmetric (pH, pW) as (top, bottom, left, right)."""
    return (padding[0], padding[0], padding[1], padding[1])


def _as_strided(xp: Any, a: Any, shape: tuple[int, ...], strides: tuple[int, ...]) -> Any:
    return xp.lib.stride_tricks.as_strided(a, shape=shape, strides=strides)


_CHUNK_BYTES = 1 << 20  # ~1 MiB of padded input per chunk: it stays in cache while its offsets are copied
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (owning pid, pool)


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def _over_batch(xp: Any, n: int, sample_bytes: int, work: Callable[[int, int], None]) -> None:
    """Run ``work(start, stop)`` over chunks of the batch axis.

    On numpy the chunks are cache-sized and shared by a thread pool (numpy releases the GIL in
    copies and ufunc loops, so the memory-bound im2col/col2im passes use every core, as BLAS does);
    on cupy it is one call over the whole batch.
    """
    global _pool
    threads = _threads()
    if xp is not np or n < 2 or threads < 2:
        work(0, n)
        return
    chunk = max(1, min(-(-n // threads), _CHUNK_BYTES // max(sample_bytes, 1)))
    if _pool is None or _pool[0] != os.getpid():  # a forked child inherits the pool but not its threads
        _pool = (os.getpid(), ThreadPoolExecutor(threads, thread_name_prefix="minires-conv"))
    list(_pool[1].map(lambda a: work(a, min(a + chunk, n)), range(0, n, chunk)))


def _im2col(
    x: Any, kernel: tuple[int, int], stride: tuple[int, int], pads: tuple[int, int, int, int], dilation: tuple[int, int]
) -> Any:
    """im2col with (top, bottom, left, right) padding; see :func:`im2col`."""
    xp = xp_of(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    oh, ow = _output_size("im2col", (h, w), kernel, stride, pads, dilation)
    if use_fast_kernels(x):  # cuda arrays: one CuPy kernel (minires/ops/cuda/kernels.py); this code is its reference
        return cuda_kernels.im2col(x, kernel, stride, pads, dilation)
    nhwc = x.transpose(0, 2, 3, 1)  # a view; contiguous already when x is channels-last
    if kh == kw == 1 and not any(pads):  # 1x1: the columns are the (strided) pixels themselves
        return xp.ascontiguousarray(nhwc[:, : sh * (oh - 1) + 1 : sh, : sw * (ow - 1) + 1 : sw]).reshape(n * oh * ow, c)
    pt, pb, pl, pr = pads
    hp, wp = h + pt + pb, w + pl + pr
    out = xp.empty((n, oh, ow, kh, kw, c), dtype=x.dtype)

    def work(a: int, b: int) -> None:
        if any(pads):  # a zero-bordered channels-last copy of this chunk
            padded = xp.empty((b - a, hp, wp, c), dtype=x.dtype)
            padded[:, :pt] = 0
            padded[:, pt + h :] = 0
            padded[:, pt : pt + h, :pl] = 0
            padded[:, pt : pt + h, pl + w :] = 0
            padded[:, pt : pt + h, pl : pl + w] = nhwc[a:b]
        else:
            padded = xp.ascontiguousarray(nhwc[a:b])
        s_n, s_h, s_w, s_c = padded.strides
        shape = (b - a, oh, ow, kh, kw, c)
        out[a:b] = _as_strided(xp, padded, shape, (s_n, s_h * sh, s_w * sw, s_h * dh, s_w * dw, s_c))

    _over_batch(xp, n, hp * wp * c * x.dtype.itemsize, work)
    return out.reshape(n * oh * ow, kh * kw * c)


def _col2im(
    cols: Any,
    input_shape: tuple[int, int, int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilation: tuple[int, int],
) -> Any:
    """col2im with (top, bottom, left, right) padding; see :func:`col2im`."""
    xp = xp_of(cols)
    n, c, h, w = input_shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    oh, ow = _output_size("col2im", (h, w), kernel, stride, pads, dilation)
    if tuple(cols.shape) != (n * oh * ow, kh * kw * c):
        raise ValueError(
            f"col2im: expected columns of shape {(n * oh * ow, kh * kw * c)} for input shape {tuple(input_shape)}, "
            f"got {tuple(cols.shape)}"
        )
    if use_fast_kernels(cols):  # cuda arrays: a deterministic gather kernel; this code is its reference
        return cuda_kernels.col2im(cols, input_shape, kernel, stride, pads, dilation)
    blocks = cols.reshape(n, oh, ow, kh, kw, c)
    pt, pb, pl, pr = pads
    if kh == kw == 1 and sh == sw == 1 and not any(pads):
        return blocks.reshape(n, h, w, c).transpose(0, 3, 1, 2)
    # Padded and big enough for every window; rows/cols past the last window get no gradient.
    out = xp.empty((n, h + pt + pb, w + pl + pr, c), dtype=cols.dtype)

    def work(a: int, b: int) -> None:
        chunk = out[a:b]
        chunk[...] = 0
        for i in range(kh):
            for j in range(kw):
                r, q = i * dh, j * dw
                chunk[:, r : r + sh * (oh - 1) + 1 : sh, q : q + sw * (ow - 1) + 1 : sw] += blocks[a:b, :, :, i, j]

    _over_batch(xp, n, out.nbytes // max(n, 1), work)  # n may be 0 (an empty batch)
    return out[:, pt : pt + h, pl : pl + w].transpose(0, 3, 1, 2)


def im2col(x: Any, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1) -> Any:
    """Unfold every kernel window of a raw NCHW array into one row of a matrix.

    ``(N, C, H, W) -> (N*oH*oW, kH*kW*C)``, with ``cols[(n, oh, ow), (i, j, c)] =
    x_padded[n, c, oh*sH + i*dH, ow*sW + j*dW]`` (zeros in the padding) and
    ``oH = (H + 2*pH - dH*(kH - 1) - 1) // sH + 1`` (likewise oW).

    Rows are output pixels (n, oh, ow); columns are kernel offset (i, j) then channel c, the
    channel innermost so the copy reads contiguous runs of a channels-last input. A convolution
    is then ``cols @ weight.transpose(0, 2, 3, 1).reshape(O, kH*kW*C).T`` -> (N*oH*oW, O).
    Works on numpy and cupy arrays; the result is a new C-contiguous array.
    """
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"im2col: expected a 4-D (N, C, H, W) array, got shape {tuple(getattr(x, 'shape', ()))}")
    return _im2col(
        x,
        _pair("im2col", "kernel_size", kernel_size, 1),
        _pair("im2col", "stride", stride, 1),
        _pads(_pair("im2col", "padding", padding, 0)),
        _pair("im2col", "dilation", dilation, 1),
    )


def col2im(
    cols: Any,
    input_shape: tuple[int, int, int, int],
    kernel_size: IntPair,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
) -> Any:
    """Fold columns back onto an image, *adding* the values that land on the same pixel.

    ``(N*oH*oW, kH*kW*C) -> (N, C, H, W)`` with ``input_shape = (N, C, H, W)``, the layout of
    :func:`im2col`; values that fall in the padding are dropped. It is im2col's adjoint
    (``<im2col(x), c> == <x, col2im(c)>``), hence the input gradient of a convolution. The loop
    runs over the kH*kW kernel offsets, each adding one strided block (no scatter-add).
    The result is a channels-last view (values NCHW, memory NHWC) of a new array.
    """
    if len(tuple(input_shape)) != 4:
        raise ValueError(f"col2im: input_shape must be (N, C, H, W), got {tuple(input_shape)}")
    return _col2im(
        cols,
        tuple(int(s) for s in input_shape),  # type: ignore[arg-type]
        _pair("col2im", "kernel_size", kernel_size, 1),
        _pair("col2im", "stride", stride, 1),
        _pads(_pair("col2im", "padding", padding, 0)),
        _pair("col2im", "dilation", dilation, 1),
    )


_PIXEL_CHUNK = 8192


def _pixel_sum_matmul(a: Any, b: Any) -> Any:
    """``a.T @ b`` for tall a (P, K) and b (P, O), summed over chunks of the P (pixel) rows.

    The weight gradient reduces over all N*oH*oW pixels; OpenBLAS is erratic on one GEMM with such
    a long reduction and small K, O (measured 30 ms to over 1 s for the same call), and steady on
    chunks of a few thousand rows.
    """
    out = a[:_PIXEL_CHUNK].T @ b[:_PIXEL_CHUNK]
    for start in range(_PIXEL_CHUNK, a.shape[0], _PIXEL_CHUNK):
        out += a[start : start + _PIXEL_CHUNK].T @ b[start : start + _PIXEL_CHUNK]
    return out


class Conv2d(Function):
    """y = conv(x, weight) + bias via im2col and one GEMM per group (layout in the module docstring)."""

    @staticmethod
    def forward(
        ctx: Context,
        x: Any,
        weight: Any,
        bias: Any,
        stride: tuple[int, int],
        pads: tuple[int, int, int, int],
        dilation: tuple[int, int],
        groups: int,
    ) -> Any:
        xp = xp_of(x)
        n, c, h, w = x.shape
        o, cg, kh, kw = weight.shape
        og = o // groups
        oh, ow = _output_size("conv2d", (h, w), (kh, kw), stride, pads, dilation)
        # (O, kH, kW, C/g) -> (O, kH*kW*C/g): matches the columns' (offset, channel) order.
        wmat = xp.ascontiguousarray(weight.transpose(0, 2, 3, 1)).reshape(o, kh * kw * cg)
        cols = [_im2col(x[:, g * cg : (g + 1) * cg] if groups > 1 else x, (kh, kw), stride, pads, dilation) for g in range(groups)]
        if groups == 1:
            out = cols[0] @ wmat.T
        else:
            out = xp.concatenate([cols[g] @ wmat[g * og : (g + 1) * og].T for g in range(groups)], axis=1)
        if bias is not None:
            out += bias
        ctx.geometry = (x.shape, (kh, kw), stride, pads, dilation, groups)
        ctx.save_for_backward(cols if ctx.needs_input_grad[1] else None, wmat if ctx.needs_input_grad[0] else None)
        return out.reshape(n, oh, ow, o).transpose(0, 3, 1, 2)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> tuple[Any, ...]:
        xp = xp_of(grad)
        cols, wmat = ctx.saved_tensors
        x_shape, kernel, stride, pads, dilation, groups = ctx.geometry
        n, c, _, _ = x_shape
        o = grad.shape[1]
        cg, og = c // groups, o // groups
        gmat = xp.ascontiguousarray(grad.transpose(0, 2, 3, 1)).reshape(-1, o)  # free if channels-last
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            group_shape = (n, cg) + tuple(x_shape[2:])
            parts = [
                _col2im(gmat[:, g * og : (g + 1) * og] @ wmat[g * og : (g + 1) * og], group_shape, kernel, stride, pads, dilation)
                for g in range(groups)
            ]
            gx = parts[0] if groups == 1 else xp.concatenate(parts, axis=1)
        if ctx.needs_input_grad[1]:
            gw_t = xp.concatenate([_pixel_sum_matmul(cols[g], gmat[:, g * og : (g + 1) * og]) for g in range(groups)], axis=1)
            gw = xp.ascontiguousarray(gw_t.reshape(kernel[0], kernel[1], cg, o).transpose(3, 2, 0, 1))
        if ctx.needs_input_grad[2]:
            gb = gmat.sum(axis=0)
        return gx, gw, gb, None, None, None, None


def _resolve_padding(
    padding: Any, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> tuple[int, int, int, int]:
    """``padding`` (int, pair, "same" or "valid") as (top, bottom, left, right), as PyTorch pads."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"conv2d: padding='same' is not supported for strided convolutions (stride {stride})")
            total = (dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1))
            # PyTorch puts the odd extra row/column at the bottom/right.
            return (total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2)
        raise ValueError(f"conv2d: padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
    return _pads(_pair("conv2d", "padding", padding, 0))


def conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> Tensor:
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    ``x (N, C, H, W)`` (or unbatched ``(C, H, W)``), ``weight (O, C/groups, kH, kW)``, ``bias (O,)``
    -> ``(N, O, oH, oW)`` with ``oH = (H + 2*pH - dH*(kH - 1) - 1) // sH + 1`` (likewise oW).
    ``stride``/``padding``/``dilation`` are ints or pairs; ``padding`` may also be "valid" (0) or
    "same" (output size = input size; stride must be 1; an odd total goes bottom/right).
    The output is a channels-last view (values NCHW, memory NHWC); see the module docstring.
    """
    x = as_tensor(x)
    weight = as_tensor(weight, like=x)
    x, weight, bias = cast_to_compute(x, weight, None if bias is None else as_tensor(bias, like=x))  # under autocast
    if x.ndim == 3:  # unbatched (C, H, W)
        y = conv2d(x.reshape(1, *x.shape), weight, bias, stride, padding, dilation, groups)
        return y.reshape(*y.shape[1:])
    if x.ndim != 4:
        raise ValueError(f"conv2d: expected a 4-D input (N, C, H, W) or 3-D (C, H, W), got shape {tuple(x.shape)}")
    if weight.ndim != 4:
        raise ValueError(f"conv2d: expected a 4-D weight (O, C/groups, kH, kW), got shape {tuple(weight.shape)}")
    check_float("conv2d", x)
    check_float("conv2d", weight)
    if x.dtype != weight.dtype:
        raise TypeError(
            f"conv2d: input dtype {x.dtype} and weight dtype {weight.dtype} differ; convert one (e.g. x.to(dtype=weight.dtype))"
        )
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    o, cg, kh, kw = weight.shape
    if kh < 1 or kw < 1:
        raise ValueError(f"conv2d: kernel size must be at least 1x1, got {kh}x{kw} (weight shape {tuple(weight.shape)})")
    c = x.shape[1]
    if c % groups:
        raise ValueError(f"conv2d: groups={groups} does not divide the input's {c} channels (input shape {tuple(x.shape)})")
    if o % groups:
        raise ValueError(
            f"conv2d: groups={groups} does not divide the weight's {o} output channels (weight shape {tuple(weight.shape)})"
        )
    if c != cg * groups:
        expects = f"{cg}" if groups == 1 else f"{cg * groups} ({cg} per group x {groups} groups)"
        raise ValueError(f"conv2d: input has {c} channels, weight expects {expects} (weight shape {tuple(weight.shape)})")
    if bias is not None:
        if tuple(bias.shape) != (o,):
            raise ValueError(f"conv2d: bias must have shape ({o},) for weight shape {tuple(weight.shape)}, got {tuple(bias.shape)}")
        if bias.dtype != x.dtype:
            raise TypeError(f"conv2d: bias dtype {bias.dtype} differs from input dtype {x.dtype}")
    kernel = (kh, kw)
    stride2 = _pair("conv2d", "stride", stride, 1)
    dilation2 = _pair("conv2d", "dilation", dilation, 1)
    pads = _resolve_padding(padding, kernel, stride2, dilation2)
    _output_size("conv2d", tuple(x.shape[2:]), kernel, stride2, pads, dilation2)  # raises on a too-small input
    return Conv2d.apply(x, weight, bias, stride2, pads, dilation2, groups)


__all__ = ["col2im", "conv2d", "im2col"]
