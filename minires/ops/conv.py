"""2-D convolution on im2col + GEMM, with :func:`im2col` and :func:`col2im` public for learners.

Column layout (chosen for speed on CPU BLAS; see ``benchmarks/conv_layers.py``)::

    cols[(n, oh, ow), (i, j, c)] = x_padded[n, c, oh*sH + i*dH, ow*sW + j*dW]
    cols.shape == (N*oH*oW, kH*kW*C)        # rows: output pixels; columns: kernel offset, then channel

Rows are output pixels in NHWC order and the channel is the innermost column index, so the copy
that builds ``cols`` reads runs of C contiguous values from a channels-last (NHWC) copy of the
input: no transposing copy of the big column matrix is ever made. The convolution is then one
GEMM per group, ``out (N*oH*oW, O) = cols @ W2.T`` with ``W2 = weight.transpose(0, 2, 3, 1)
.reshape(O, kH*kW*C)`` (a small copy of the weight, not of the columns). Backward uses the
columns again: ``dW2 = dout.T @ cols`` and ``dcols = dout @ W2``, and :func:`col2im` adds the
kH*kW column blocks back onto the input (:func:`fold_into`: one dense add per kernel offset, the
image split into its stride phases when the stride is above 1).

On the CPU, 3x3 stride-1 layers large enough run as Winograd F(2x2, 3x3) instead
(:mod:`minires.ops.winograd`; the rule is :func:`minires.backends.choose_conv_algorithm`).

The output (N, O, oH, oW) is returned as a *channels-last view* of the GEMM result (the same
memory format as PyTorch's ``channels_last``): its values and shape are NCHW, but its memory is
NHWC, which saves a transposing copy here and makes the next layer's im2col read contiguous
memory. Elementwise ops keep that layout; anything that needs C-contiguous memory copies it.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from minires import backends
from minires.amp import cast_to_compute
from minires.autograd.function import Context, Function
from minires.backend import xp_of
from minires.ops import _procs, winograd
from minires.ops._parallel import over_batch
from minires.ops._util import as_tensor, check_float
from minires.ops.cuda import launch as cuda_launch
from minires.ops.cuda import use_fast_kernels
from minires.ops.geometry import IntPair, Window2d
from minires.tensor import Tensor


def _as_strided(xp: Any, a: Any, shape: tuple[int, ...], strides: tuple[int, ...]) -> Any:
    return xp.lib.stride_tricks.as_strided(a, shape=shape, strides=strides)


_CHUNK_BYTES = 1 << 20  # ~1 MiB of padded input per chunk: it stays in cache while its offsets are copied


def _over_batch(xp: Any, n: int, sample_bytes: int, work: Callable[[int, int], None]) -> None:
    """Run ``work(start, stop)`` over cache-sized chunks of the batch, shared by the cores (numpy only)."""
    over_batch(xp, n, sample_bytes, work, _CHUNK_BYTES)


def _im2col(x: Any, window: Window2d, out: Any = None) -> Any:
    """im2col of x (N, C, H, W) over a checked ``window`` for its (H, W); see :func:`im2col`. ``out``: the
    (N*oH*oW, kH*kW*C) C-contiguous array to write the columns into (a new one when None)."""
    xp = xp_of(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw), pads = window.kernel, window.stride, window.dilation, window.padding
    oh, ow = window.output_size
    if use_fast_kernels(x, "im2col"):  # cuda arrays: one CUDA kernel (minires/ops/cuda/); this code is its reference
        return cuda_launch.im2col(x, window)
    nhwc = x.transpose(0, 2, 3, 1)  # a view; contiguous already when x is channels-last
    if kh == kw == 1 and not any(pads):  # 1x1: the columns are the (strided) pixels themselves
        pixels = nhwc[:, : sh * (oh - 1) + 1 : sh, : sw * (ow - 1) + 1 : sw]
        if out is None:
            return xp.ascontiguousarray(pixels).reshape(n * oh * ow, c)
        out.reshape(n, oh, ow, c)[...] = pixels
        return out
    pt, pb, pl, pr = pads
    hp, wp = h + pt + pb, w + pl + pr
    matrix = xp.empty((n * oh * ow, kh * kw * c), dtype=x.dtype) if out is None else out
    out = matrix.reshape(n, oh, ow, kh, kw, c)

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
    return matrix


def _col2im(cols: Any, input_shape: tuple[int, int, int, int], window: Window2d) -> Any:
    """col2im onto ``input_shape`` (N, C, H, W) over a checked ``window`` for its (H, W); see :func:`col2im`."""
    n, c, h, w = input_shape
    (kh, kw), oh, ow = window.kernel, *window.output_size
    if tuple(cols.shape) != (n * oh * ow, kh * kw * c):
        raise ValueError(
            f"col2im: expected columns of shape {(n * oh * ow, kh * kw * c)} for input shape {tuple(input_shape)}, "
            f"got {tuple(cols.shape)}"
        )
    if use_fast_kernels(cols, "col2im"):  # cuda arrays: a deterministic gather kernel; this code is its reference
        return cuda_launch.col2im(cols, input_shape, window)
    blocks = cols.reshape(n, oh, ow, kh * kw, c).transpose(3, 0, 1, 2, 4)  # a view: block k = kernel offset (k // kW, k % kW)
    return _fold_blocks(blocks, input_shape, window)


# Below this many channels per group, the input gradient is folded from contiguous per-offset blocks and
# strided phases are summed densely (one pixel's C values are too short a run for numpy's inner loop);
# from it on, one GEMM and direct strided adds are as fast (measured on one core: 0.52-0.88x the time of
# the direct adds at 16-32 channels, 0.98-1.08x with this switch at 64-512, 1.03-1.10x without it).
_DENSE_FOLD_MAX_CHANNELS = 64


def _fold_blocks(blocks: Any, input_shape: tuple[int, int, int, int], window: Window2d) -> Any:
    """col2im from offset-major blocks: ``blocks[i*kW + j]`` (N, oH, oW, C) is what kernel offset (i, j) read.

    Returns (N, C, H, W), a channels-last view (values NCHW, memory NHWC) of a new zero-bordered array;
    :func:`fold_into` does the adding, over cache-sized chunks of the batch shared by the cores.
    """
    xp = xp_of(blocks)
    n, c, h, w = input_shape
    (kh, kw), (sh, sw), (pt, pb, pl, pr) = window.kernel, window.stride, window.padding
    if kh == kw == 1 and sh == sw == 1 and not any(window.padding):
        return blocks[0].reshape(n, h, w, c).transpose(0, 3, 1, 2)
    out = xp.empty((n, h + pt + pb, w + pl + pr, c), dtype=blocks.dtype)  # rows/cols past the last window get no gradient
    _over_batch(xp, n, out.nbytes // max(n, 1), lambda a, b: fold_into(out[a:b], blocks[:, a:b], window))  # n may be 0
    return out[:, pt : pt + h, pl : pl + w].transpose(0, 3, 1, 2)


def fold_into(padded: Any, blocks: Any, window: Window2d) -> None:
    """Zero ``padded`` (n, H + pT + pB, W + pL + pR, C) and add each kernel offset's block onto it.

    ``blocks[i*kW + j]`` (n, oH, oW, C) is what offset (i, j) read. With stride 1 the destination of
    every block is a dense window, so each add runs over whole rows of oW*C values. With stride s > 1 a
    block lands on every s-th pixel, which would make each add's inner loop a single pixel's C values;
    so the image is split into its s*s *phases* (the pixels with row % sH == a and column % sW == b):
    offset (i, j) lands densely in phase ((i*dH) % sH, (j*dW) % sW) at position ((i*dH) // sH,
    (j*dW) // sW). A phase that several offsets land in is summed in a dense buffer and written once;
    one that a single offset lands in is added straight from its block. Any array module.
    """
    xp = xp_of(blocks)
    (kh, kw), (sh, sw), (dh, dw) = window.kernel, window.stride, window.dilation
    oh, ow = window.output_size
    phases: dict[tuple[int, int], list[tuple[int, int, int]]] = {}  # phase -> (block, row, column) in the phase
    for i in range(kh):
        for j in range(kw):
            phases.setdefault(((i * dh) % sh, (j * dw) % sw), []).append((i * kw + j, (i * dh) // sh, (j * dw) // sw))
    padded[...] = 0
    wide = blocks.shape[-1] >= _DENSE_FOLD_MAX_CHANNELS  # runs of C values are long enough as they are
    for (ra, cb), parts in phases.items():
        phase = padded[:, ra::sh, cb::sw]  # a view: (n, ceil((rows - ra) / sH), ..., C)
        if len(parts) == 1 or (sh == sw == 1) or wide:  # dense already (stride 1), one block, or wide: add in place
            for k, r, q in parts:
                phase[:, r : r + oh, q : q + ow] += blocks[k]
            continue
        dense = xp.zeros(phase.shape, dtype=blocks.dtype)
        for k, r, q in parts:
            dense[:, r : r + oh, q : q + ow] += blocks[k]
        phase[...] = dense


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
    return _im2col(x, Window2d.of("im2col", x.shape[2:], kernel_size, stride, padding, dilation))


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
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4:
        raise ValueError(f"col2im: input_shape must be (N, C, H, W), got {tuple(input_shape)}")
    return _col2im(cols, shape, Window2d.of("col2im", shape[2:], kernel_size, stride, padding, dilation))  # type: ignore[arg-type]


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


def check_groups(op: str, groups: Any, in_channels: int, out_channels: int, shapes: str = "") -> None:
    """``groups`` must be a positive int dividing both channel counts (``shapes`` is added to the message)."""
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    if in_channels % groups:
        raise ValueError(f"{op}: groups={groups} does not divide the {in_channels} input channels{shapes}")
    if out_channels % groups:
        raise ValueError(f"{op}: groups={groups} does not divide the {out_channels} output channels{shapes}")


def _check_conv_arguments(
    x: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any, groups: Any
) -> Window2d:
    """Every check of a conv2d call on raw arrays, worded ``conv2d: ...``; returns the checked window."""
    name = "conv2d"
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D input (N, C, H, W) or 3-D (C, H, W), got shape {tuple(x.shape)}")
    if weight.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D weight (O, C/groups, kH, kW), got shape {tuple(weight.shape)}")
    check_float(name, x)
    check_float(name, weight)
    if x.dtype != weight.dtype:
        raise TypeError(
            f"{name}: input dtype {x.dtype} and weight dtype {weight.dtype} differ; convert one (e.g. x.to(dtype=weight.dtype))"
        )
    o, cg, kh, kw = weight.shape
    if kh < 1 or kw < 1:
        raise ValueError(f"{name}: kernel size must be at least 1x1, got {kh}x{kw} (weight shape {tuple(weight.shape)})")
    c = x.shape[1]
    check_groups(name, groups, c, o, f" (input shape {tuple(x.shape)}, weight shape {tuple(weight.shape)})")
    if c != cg * groups:
        expects = f"{cg}" if groups == 1 else f"{cg * groups} ({cg} per group x {groups} groups)"
        raise ValueError(f"{name}: input has {c} channels, weight expects {expects} (weight shape {tuple(weight.shape)})")
    if bias is not None:
        if tuple(bias.shape) != (o,):
            raise ValueError(f"{name}: bias must have shape ({o},) for weight shape {tuple(weight.shape)}, got {tuple(bias.shape)}")
        if bias.dtype != x.dtype:
            raise TypeError(f"{name}: bias dtype {bias.dtype} differs from input dtype {x.dtype}")
    return Window2d.of(name, x.shape[2:], (kh, kw), stride, padding, dilation, padding_strings=True)


def weight_matrix(weight: Any) -> Any:
    """(O, C/g, kH, kW) -> (O, kH*kW*C/g): matches the columns' (offset, channel) order (a small copy)."""
    o, cg, kh, kw = weight.shape
    return xp_of(weight).ascontiguousarray(weight.transpose(0, 2, 3, 1)).reshape(o, kh * kw * cg)


def grad_matrix(grad: Any) -> Any:
    """An output gradient (N, O, oH, oW) as (N*oH*oW, O), pixels in rows (free if it is channels-last)."""
    return xp_of(grad).ascontiguousarray(grad.transpose(0, 2, 3, 1)).reshape(-1, grad.shape[1])


def group_columns(x: Any, window: Window2d, groups: int) -> list[Any]:
    """im2col of each group's channels of x: ``groups`` matrices (N*oH*oW, kH*kW*C/g)."""
    cg = x.shape[1] // groups
    return [_im2col(x[:, g * cg : (g + 1) * cg] if groups > 1 else x, window) for g in range(groups)]


def conv_from_columns(cols: list[Any], wmat: Any, n: int, window: Window2d, bias: Any = None) -> Any:
    """The convolution as one GEMM per group, plus bias: (N, O, oH, oW), a channels-last view."""
    o, groups = wmat.shape[0], len(cols)
    og = o // groups
    if groups == 1:
        out = cols[0] @ wmat.T
    else:
        out = xp_of(wmat).concatenate([cols[g] @ wmat[g * og : (g + 1) * og].T for g in range(groups)], axis=1)
    if bias is not None:
        out += bias
    return out.reshape(n, *window.output_size, o).transpose(0, 3, 1, 2)


def input_grad_from(gmat: Any, wmat: Any, x_shape: tuple[int, ...], window: Window2d, groups: int) -> Any:
    """dL/dx (N, C, H, W) = col2im(dout @ W2), per group: a transposed convolution of the gradient."""
    n, c = x_shape[:2]
    cg, og = c // groups, wmat.shape[0] // groups
    group_shape = (n, cg) + tuple(x_shape[2:])
    parts = []
    for g in range(groups):
        gm, wm = gmat[:, g * og : (g + 1) * og], wmat[g * og : (g + 1) * og]
        if use_fast_kernels(gm, "col2im"):  # cuda: one GEMM, then the col2im kernel
            parts.append(_col2im(gm @ wm, group_shape, window))
        else:
            parts.append(_fold_blocks(grad_blocks(gm, wm, n, window), group_shape, window))
    return parts[0] if groups == 1 else xp_of(gmat).concatenate(parts, axis=1)


def grad_blocks(gm: Any, wm: Any, n: int, window: Window2d) -> Any:
    """``dout @ W2`` as offset-major blocks (kH*kW, n, oH, oW, C) for :func:`fold_into`: one GEMM per kernel
    offset below :data:`_DENSE_FOLD_MAX_CHANNELS` channels (:func:`offset_blocks`), from it on one GEMM
    whose columns are viewed as the blocks (long enough runs of C values as they are)."""
    (kh, kw), (oh, ow) = window.kernel, window.output_size
    c = wm.shape[1] // (kh * kw)
    if c >= _DENSE_FOLD_MAX_CHANNELS:
        return (gm @ wm).reshape(n, oh, ow, kh * kw, c).transpose(3, 0, 1, 2, 4)
    return offset_blocks(gm, wm, n, window)


def offset_blocks(gm: Any, wm: Any, n: int, window: Window2d) -> Any:
    """``dout @ W2`` by kernel offset: (kH*kW, n, oH, oW, C) from gm (n*oH*oW, O) and wm (O, kH*kW*C).

    One GEMM per offset, each writing a contiguous block, so that :func:`fold_into` adds long runs.
    """
    o, kk = wm.shape[0], window.kernel[0] * window.kernel[1]
    blocks = xp_of(gm).matmul(gm, wm.reshape(o, kk, -1).transpose(1, 0, 2))
    return blocks.reshape(kk, n, *window.output_size, blocks.shape[-1])


def weight_grad_from(cols: list[Any], gmat: Any, weight_shape: tuple[int, ...]) -> Any:
    """dL/dweight (O, C/g, kH, kW) = (dout.T @ cols) per group, summed over the pixel rows in chunks."""
    o, cg, kh, kw = weight_shape
    xp, groups = xp_of(gmat), len(cols)
    og = o // groups
    gw_t = xp.concatenate([_pixel_sum_matmul(cols[g], gmat[:, g * og : (g + 1) * og]) for g in range(groups)], axis=1)
    return xp.ascontiguousarray(gw_t.reshape(kh, kw, cg, o).transpose(3, 2, 0, 1))


def input_from_columns(cols: list[Any], x_shape: tuple[int, ...], window: Window2d) -> Any:
    """x (N, C, H, W) rebuilt from its per-group im2col columns (the double backward's copy of x).

    col2im adds up every copy of a pixel, so divide by how many windows read it: x (to rounding) at
    every pixel a window reads, 0 at pixels none reads -- which the convolution never uses either.
    """
    xp = xp_of(cols[0])
    n, c = x_shape[:2]
    group_shape = (n, c // len(cols)) + tuple(x_shape[2:])
    parts = []
    for columns in cols:
        copies = _col2im(xp.ones_like(columns), group_shape, window)
        parts.append(_col2im(columns, group_shape, window) / xp.maximum(copies, 1))
    return parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=1)


def _shared_rows(a: Any, groups: int) -> bool:
    """Whether the im2col path runs as batch-slice kernels (:func:`conv_rows_forward` and its gradients),
    which :mod:`minires.ops._procs` shares with the worker processes: NumPy arrays, one group."""
    return type(a) is np.ndarray and groups == 1


def conv_rows_forward(x: Any, wmat: Any, bias: Any, window: Window2d) -> tuple[list[Any], Any]:
    """im2col + GEMM (+ bias) slice by slice of the batch: ([columns], output (N, O, oH, oW) channels-last).

    The same arithmetic as :func:`group_columns` + :func:`conv_from_columns` with one group, written into
    arrays :func:`minires.ops._procs.empty` hands out, so that the worker processes can take slices.
    """
    n, c = x.shape[:2]
    (kh, kw), (oh, ow), o = window.kernel, window.output_size, wmat.shape[0]
    cols = _procs.empty((n * oh * ow, kh * kw * c), x.dtype)
    out = _procs.empty((n * oh * ow, o), x.dtype)
    plan = _procs.plan(n, x.nbytes + out.nbytes, x, wmat)  # the columns are scratch: the same rule as Winograd's
    plan.run(_forward_rows, x, wmat, bias, window, out=(cols, out))
    return [cols], out.reshape(n, oh, ow, o).transpose(0, 3, 1, 2)


@_procs.kernel
def _forward_rows(a: int, b: int, part: int, x: Any, wmat: Any, bias: Any, window: Window2d, cols: Any, out: Any) -> None:
    """Samples a..b of :func:`conv_rows_forward`."""
    ohw = window.output_size[0] * window.output_size[1]
    rows = slice(a * ohw, b * ohw)
    _im2col(x[a:b], window, out=cols[rows])
    np.matmul(cols[rows], wmat.T, out=out[rows])
    if bias is not None:
        out[rows] += bias


def conv_rows_input_grad(gmat: Any, wmat: Any, x_shape: tuple[int, ...], window: Window2d) -> Any:
    """dL/dx (N, C, H, W) of a one-group convolution from gmat (N*oH*oW, O), slice by slice of the batch:
    what :func:`input_grad_from` computes, in arrays the worker processes can take slices of."""
    n, c, h, w = x_shape
    pt, pb, pl, pr = window.padding
    out = _procs.empty((n, h + pt + pb, w + pl + pr, c), gmat.dtype)
    plan = _procs.plan(n, gmat.nbytes + out.nbytes, gmat, wmat)
    plan.run(_input_grad_rows, gmat, wmat, window, out=(out,))
    return out[:, pt : pt + h, pl : pl + w].transpose(0, 3, 1, 2)


@_procs.kernel
def _input_grad_rows(a: int, b: int, part: int, gmat: Any, wmat: Any, window: Window2d, out: Any) -> None:
    """Samples a..b of :func:`conv_rows_input_grad`: :func:`grad_blocks` folded onto the zero-bordered
    ``out[a:b]`` in cache-sized chunks."""
    (oh, ow), (kh, kw), c = window.output_size, window.kernel, out.shape[3]
    gm = gmat[a * oh * ow : b * oh * ow]
    if kh == kw == 1 and window.stride == (1, 1) and not any(window.padding):  # 1x1: a GEMM onto the pixels
        np.matmul(gm, wmat, out=out[a:b].reshape(-1, c))
        return
    blocks = grad_blocks(gm, wmat, b - a, window)
    target = out[a:b]
    _over_batch(np, b - a, target.nbytes // max(b - a, 1), lambda s, e: fold_into(target[s:e], blocks[:, s:e], window))


def conv_rows_weight_grad(cols: Any, gmat: Any, weight_shape: tuple[int, ...], n: int) -> Any:
    """dL/dweight (O, C, kH, kW) of a one-group convolution over a batch of ``n``, each slice of the batch
    summed on its own (:func:`_pixel_sum_matmul`) and the slices' sums added: :func:`weight_grad_from`'s value."""
    o, c, kh, kw = weight_shape
    plan = _procs.plan(n, cols.nbytes // (kh * kw) + gmat.nbytes, cols, gmat)  # the forward's rule: about x + output
    parts = _procs.empty((plan.parts, o, kh * kw * c), gmat.dtype)
    plan.run(_weight_grad_rows, cols, gmat, gmat.shape[0] // max(n, 1), out=(parts,))
    gw = parts[0] if plan.parts == 1 else parts.sum(axis=0)  # (O, kH*kW*C): each O's block transposes on its own
    return np.ascontiguousarray(gw.reshape(o, kh, kw, c).transpose(0, 3, 1, 2))


@_procs.kernel
def _weight_grad_rows(a: int, b: int, part: int, cols: Any, gmat: Any, pixels: int, parts: Any) -> None:
    """``parts[part]`` = gradient^T @ columns over samples a..b (``pixels`` rows each)."""
    rows = slice(a * pixels, b * pixels)
    parts[part] = _pixel_sum_matmul(gmat[rows], cols[rows])


class Conv2dFunction(Function):
    """y = conv(x, weight) + bias via im2col and one GEMM per group (layout in the module docstring).

    ``Conv2dFunction.apply(x, weight, bias, stride, padding, dilation, groups)`` takes :func:`conv2d`'s
    arguments, all positional (bias may be None; a 4-D input), and checks them all; :func:`conv2d`
    adds defaults, unbatched input and autocast on top. 3x3 stride-1 convolutions may run as Winograd
    F(2x2, 3x3) instead (:mod:`minires.ops.winograd`), chosen per call by
    :func:`minires.backends.choose_conv_algorithm`; both compute the same values.

    Under ``create_graph=True`` its input and weight gradients are ops of their own
    (:mod:`minires.ops.conv_grad`: a transposed convolution and a weight-gradient op) whose backwards
    are convolutions again, so a convolution is differentiable to any order. Those need x and the
    weight as Tensors: forward keeps a reference to the weight (a parameter, alive anyway) and x is
    rebuilt from the saved columns (:func:`input_from_columns`), so the first-order path keeps no more
    memory than it needs.
    """

    @staticmethod
    def forward(
        ctx: Context,
        x: Any,
        weight: Any,
        bias: Any,
        stride: Any,
        padding: Any,
        dilation: Any,
        groups: int,
    ) -> Any:
        window = _check_conv_arguments(x, weight, bias, stride, padding, dilation, groups)
        ctx.x_shape, ctx.window, ctx.groups = x.shape, window, groups
        ctx.arguments = (stride, padding, dilation, groups)
        ctx.algorithm = backends.choose_conv_algorithm(
            xp_of(x), x.dtype, window.kernel, window.stride, window.padding, window.dilation, groups,
            x.shape[1], window.output_size,
        )
        need_x, need_w = ctx.needs_input_grad[:2]
        if ctx.algorithm == "winograd":  # keeps x and weight only: backward recomputes the tiles chunk by chunk
            u = winograd.weight_transform(weight)
            out = winograd.conv3x3(x, u, window.padding)
            if bias is not None:
                out += bias[:, None, None]
            ctx.save_for_backward(None, None, weight if need_x else None, x if need_w else None)
            ctx.transformed = u if need_x else None  # the input gradient's transform is a permutation of it
            return out
        wmat = weight_matrix(weight)
        if _shared_rows(x, groups):  # numpy: the batch shared with the worker processes
            cols, out = conv_rows_forward(x, wmat, bias, window)
        else:
            cols = group_columns(x, window, groups)
            out = conv_from_columns(cols, wmat, x.shape[0], window, bias)
        ctx.save_for_backward(cols if need_w else None, wmat if need_x else None, weight if need_x else None, None)
        return out

    @staticmethod
    def backward(ctx: Context, grad: Any) -> tuple[Any, ...]:
        cols, wmat, weight, x = ctx.saved_tensors
        x_shape, window, groups = ctx.x_shape, ctx.window, ctx.groups
        gx = gw = gb = None
        if ctx.algorithm == "winograd":  # works on grad (N, O, oH, oW) itself: no pixel-row matrix
            if ctx.needs_input_grad[0]:
                gx = winograd.conv3x3_input_grad(grad, weight, window.padding, ctx.transformed)
            if ctx.needs_input_grad[1]:
                gw = winograd.conv3x3_weight_grad(x, grad, window.padding)
            if ctx.needs_input_grad[2]:
                gb = grad.sum(axis=(0, 2, 3))
            return gx, gw, gb, None, None, None, None
        gmat = grad_matrix(grad)
        shared = _shared_rows(gmat, groups)
        if ctx.needs_input_grad[0]:
            gx = conv_rows_input_grad(gmat, wmat, x_shape, window) if shared else input_grad_from(gmat, wmat, x_shape, window, groups)
        if ctx.needs_input_grad[1]:
            w_shape = (grad.shape[1], x_shape[1] // groups, *window.kernel)
            gw = conv_rows_weight_grad(cols[0], gmat, w_shape, x_shape[0]) if shared else weight_grad_from(cols, gmat, w_shape)
        if ctx.needs_input_grad[2]:
            gb = gmat.sum(axis=0)
        return gx, gw, gb, None, None, None, None

    @staticmethod
    def backward_graph(ctx: Context, grad: Tensor) -> tuple[Any, ...]:
        from minires.ops.conv_grad import Conv2dInputGradFunction, Conv2dWeightGradFunction

        x_shape, groups = ctx.x_shape, ctx.groups
        cols, _, weight, x = ctx.saved_arrays
        weight = None if weight is None else ctx.saved_tensor(2)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = Conv2dInputGradFunction.apply(grad, weight, x_shape, ctx.window, ctx.arguments)
        if ctx.needs_input_grad[1]:  # Winograd kept x itself; im2col rebuilds it from the columns
            x = ctx.saved_tensor(3) if x is not None else ctx.input_tensor(0, input_from_columns(cols, x_shape, ctx.window))
            w_shape = (grad.shape[1], x_shape[1] // groups, *ctx.window.kernel)
            gw = Conv2dWeightGradFunction.apply(x, grad, w_shape, ctx.window, ctx.arguments)
        if ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None, None, None, None


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
    Arguments are checked by :class:`Conv2dFunction`.
    """
    x = as_tensor(x)
    weight = as_tensor(weight, like=x)
    x, weight, bias = cast_to_compute(x, weight, None if bias is None else as_tensor(bias, like=x))  # under autocast
    if x.ndim == 3:  # unbatched (C, H, W)
        y = conv2d(x.reshape(1, *x.shape), weight, bias, stride, padding, dilation, groups)
        return y.reshape(*y.shape[1:])
    return Conv2dFunction.apply(x, weight, bias, stride, padding, dilation, groups)


__all__ = ["Conv2dFunction", "check_groups", "col2im", "conv2d", "im2col"]
