"""Batch normalisation on the CPU in a few fast NumPy passes: BN, BN + ReLU, BN + add + ReLU, train and eval.

The generic code in :mod:`minires.ops.normalization` is the reference and runs for every layout; this
module is its fast path for NumPy arrays whose memory is *channels-last*, (N, *spatial, C) contiguous,
which is what ``conv2d`` returns (and what a 2-D (N, C) input is anyway), with few channels (up to
:data:`MAX_CHANNELS`, where it pays). It computes the same values.

Why a separate path: the shape of the inner loops
-------------------------------------------------
NumPy runs a ufunc as an outer loop around an inner loop over the innermost memory axis. With
channels-last memory that axis is C: ``x * scale`` with scale (C,) broadcast runs an inner loop of 16
elements 131072 times for a 128x16x32x32 activation, and ``x.sum((0, 2, 3))`` is no faster. So the
memory is viewed as a 2-D array of long rows::

    rows = x.transpose(0, 2, 3, 1).reshape(R, L)     L = j * C (about 16K values), column l is channel l % C

and each per-channel vector v (C,) is tiled once into a row ``np.tile(v, j)`` (L,). Then every ufunc
meets two contiguous length-L operands (``rows * scale_row``: 3.5x faster than broadcasting the (C,)
vector), and a per-channel sum is ``rows.sum(0)`` -- whole rows added to an (L,) accumulator, about 15x
faster than reducing over the pixel axis -- folded from (L,) to (C,) by ``.reshape(j, C).sum(0)``.
Even ``np.maximum(y, 0)`` is 2.5x faster against a zero *row* than against the scalar 0.

The rows are processed in blocks of about 256 KB (:data:`BLOCK_BYTES`). A block, and a block-sized
scratch buffer, stay in the L2 cache between the ufuncs that work on them, so a chain of k in-place
ufuncs on one block costs one trip to memory instead of k. Each block's column sums are added into
float64 accumulators, so a float32 sum over millions of values loses no more than one block's rounding.
Each pass is a kernel over a range of rows (``_*_kernel`` below); on a multi-core CPU the rows are shared
with minires' worker processes (:mod:`minires.ops._procs`: the arrays live in shared memory, and a pass
over a part of the rows is the same code in every process; column sums add the parts' sums).

The passes
----------
M values per channel; ``d = x - mean``; ``k = weight * invstd`` (``invstd = 1 / sqrt(var + eps)``).

Training forward, ``y = relu(d * k + bias + residual)`` (the ReLU and residual when fused in):

1. ``mean = sum(x) / M``                                  reads x
2. ``y <- d``; ``var = sum(d * d) / M``                   reads x, writes y (sum(d * d) by einsum: no temporary)
3. ``y <- relu(y * k + bias + residual)``                 in place on y, block by block

Two passes for the statistics on purpose: ``var = E[x^2] - E[x]^2`` in one pass cancels away every
digit in float32 when the mean is ~1e3 times the spread; ``sum((x - mean)^2)`` does not.

Eval forward: pass 3 alone, with ``y <- x - running_mean`` done in the block first.

Backward, with ``g`` the incoming gradient and ``g_r = g * (y > 0)`` through a fused ReLU (else g):

1. ``g_r`` (written out when needed), ``sum(g_r)`` and ``sum(g_r * d)``  (d rebuilt in a block-sized scratch)
2. training: ``dx = k * g_r + c1 * d + c2`` with ``c1 = -k * invstd^2 * sum(g_r * d) / M`` and
   ``c2 = -k * sum(g_r) / M`` (the closed form ``k * (g_r - mean(g_r) - x_hat * mean(g_r * x_hat))``);
   eval: ``dx = k * g_r``.

``dweight = sum(g_r * d) * invstd`` and ``dbias = sum(g_r)`` come from pass 1. ``dx`` is written over
``g_r`` when nobody else needs ``g_r`` (BN + ReLU); with a residual, ``g_r`` is the residual's gradient.
Outputs are channels-last, like the input; an operand in another layout (a gradient in NCHW memory) is
copied into channels-last first.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, Callable

import numpy as np

from minires.ops import _procs
from minires.ops.cuda import fast_kernels_enabled
from minires.ops.layout import channels_last_dense, from_last, in_layout, to_last

#: The most channels the fast path takes (the widest measured). With glibc keeping freed memory
#: (:mod:`minires.ops._malloc`) it beat or tied the generic code at every width of the CIFAR nets, one
#: process, BN + ReLU forward / backward in ms: 64x64x32x32 4.96 / 11.1 vs generic 6.02 / 16.0,
#: 64x128x16x16 2.02 / 3.42 vs 2.42 / 4.64, 64x256x8x8 0.84 / 1.54 vs 1.12 / 1.65, 64x512x4x4 0.48 / 0.80
#: vs 0.52 / 0.78, 128x64x8x8 0.48 / 0.80 vs 0.74 / 0.84. (Without those malloc settings the generic
#: code won from 64 channels, and this was 32.)
MAX_CHANNELS = 512
#: Target length of one row, in values (a multiple of C close to this).
ROW_VALUES = 1 << 14
#: Bytes of one block of rows: a block of each operand and the scratch buffers fit in the L2 cache.
BLOCK_BYTES = 1 << 18
#: Arrays from this size on have their passes shared with the worker processes (:mod:`minires.ops._procs`).
#: The passes are bound by memory bandwidth, which the processes share, so splitting gains less than it does
#: for convolutions (a lone 8 MB sum pass: 0.54 ms in one process, 0.37 in two), and each pass costs a round
#: trip. Measured in whole training steps (2-core machine, steps alternating): ResNet-20 330 ms with no BN
#: split, 301 ms splitting from 4 MB, 293 ms from 2 MB; ResNet-18 896, 832 and 868 ms. From 2 MB, every
#: BN of ResNet-20 is split, so each process writes the half of the activations it reads in the next
#: convolution (a worker reading what this process wrote ran its slices 12-40% slower than this one).
SPLIT_BYTES = 2 << 20

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def usable(x: Any) -> bool:
    """Whether the fast path runs for an (N, C, *) input x: a NumPy float32/float64 array with channels-last
    memory and at most :data:`MAX_CHANNELS` channels, while fast kernels are enabled (``MINIRES_FAST_KERNELS=0``
    or :func:`minires.ops.cuda.set_fast_kernels` leave the generic reference path everywhere)."""
    return (
        fast_kernels_enabled()
        and type(x) is np.ndarray
        and x.ndim >= 2
        and 0 < x.shape[1] <= MAX_CHANNELS
        and x.dtype in _DTYPES
        and x.size > 0
        and channels_last_dense(x)
    )


@functools.lru_cache(maxsize=256)
def row_length(pixels: int, channels: int) -> int:
    """L = j * C with j the largest divisor of ``pixels`` (values per channel) such that L <= :data:`ROW_VALUES`
    (L = C when C alone is longer): the rows tile the (pixels, C) memory exactly."""
    j = max(1, min(pixels, ROW_VALUES // channels))
    while pixels % j:
        j -= 1
    return j * channels


class ChannelRows:
    """The rows view of channels-last (N, C, *) arrays shaped like ``x``, and the per-channel helpers on it."""

    def __init__(self, x: np.ndarray) -> None:
        self.shape = x.shape
        self.dtype = x.dtype
        self.channels = x.shape[1]
        self.count = x.size // self.channels  # M: values per channel
        length = row_length(self.count, self.channels)
        self.reps = length // self.channels
        self.rows_shape = (x.size // length, length)
        self.block = min(max(1, BLOCK_BYTES // (length * x.dtype.itemsize)), self.rows_shape[0])

    def rows(self, a: np.ndarray) -> np.ndarray:
        """(R, L) view of ``a`` (x's shape), after a copy into channels-last memory and x's dtype if needed."""
        a = a.astype(self.dtype, copy=False)
        if not channels_last_dense(a):
            a = in_layout(a, channels_last=True)
        return a.transpose(to_last(a.ndim)).reshape(self.rows_shape)

    def empty(self) -> tuple[np.ndarray, np.ndarray]:
        """A new uninitialised channels-last array shaped like x, and its rows view."""
        last = tuple(self.shape[i] for i in to_last(len(self.shape)))
        a = _procs.empty(last, self.dtype).transpose(from_last(len(self.shape)))  # shared while workers run
        return a, self.rows(a)

    def tile(self, v: Any) -> np.ndarray:
        """Per-channel (C,) values -> one (L,) row in x's dtype (column l holds channel l % C), in shared
        memory while worker processes run (:func:`minires.ops._procs.empty`)."""
        row = _procs.empty((self.rows_shape[1],), self.dtype)
        row.reshape(self.reps, self.channels)[...] = v
        return row

    def fold(self, column_sums: np.ndarray) -> np.ndarray:
        """(L,) column sums -> (C,) per-channel sums, float64."""
        return column_sums.reshape(self.reps, self.channels).sum(0)

    def run(self, fn: Callable[..., Any], *args: Any, out: tuple[np.ndarray, ...] = (), sums: int = 0) -> Any:
        """``fn(a, b, part, block, *args, *out[, parts])`` over the rows, shared with the worker processes
        when the arrays are big (:mod:`minires.ops._procs`). ``sums`` > 0: ``fn`` writes ``sums`` float64
        (L,) column sums of its rows into ``parts[part]``; returns their totals over all parts, (sums, L)."""
        n = self.rows_shape[0]
        arrays = [a for a in (*args, *out) if isinstance(a, np.ndarray)]
        plan = _procs.plan(n, n * self.rows_shape[1] * self.dtype.itemsize, *arrays, min_bytes=SPLIT_BYTES)
        if not sums:
            plan.run(fn, self.block, *args, out=out)
            return None
        parts = _procs.empty((plan.parts, sums, self.rows_shape[1]), np.float64)
        plan.run(fn, self.block, *args, out=(*out, parts))
        return parts[0] if plan.parts == 1 else parts.sum(0)


def _blocks(a: int, b: int, block: int) -> Iterator[slice]:
    return (slice(i, min(i + block, b)) for i in range(a, b, block))


def _normalise_rows(cr: ChannelRows, out: np.ndarray, source: np.ndarray, mean_row: Any, scale: Any, bias: Any,
                    residual: np.ndarray | None, relu: bool) -> None:
    """Pass 3: ``out <- relu((source - mean) * scale + bias + residual)`` block by block, on rows. ``mean_row``
    None: source is already centred (``x - mean``). bias, residual None: left out."""
    bias_row = None if bias is None else cr.tile(bias)
    cr.run(_normalise_kernel, source, mean_row, cr.tile(scale), bias_row, residual, relu, out=(out,))


@_procs.kernel
def _normalise_kernel(a: int, b: int, part: int, block: int, source: np.ndarray, mean_row: Any, scale_row: np.ndarray,
                      bias_row: Any, residual: Any, relu: bool, out: np.ndarray) -> None:
    """Pass 3 on rows a..b (see :func:`_normalise_rows`)."""
    zero_row = np.zeros_like(scale_row)
    for r in _blocks(a, b, block):
        ob = out[r]
        if mean_row is None:
            np.multiply(source[r], scale_row, out=ob)
        else:
            np.subtract(source[r], mean_row, out=ob)
            ob *= scale_row
        if bias_row is not None:
            ob += bias_row
        if residual is not None:
            ob += residual[r]
        if relu:
            np.maximum(ob, zero_row, out=ob)  # NaN stays NaN, as torch.relu


def _dot_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column sums of ``a * b`` for two (rows, L) blocks -> (L,), without an (rows, L) temporary."""
    return np.einsum("ij,ij->j", a, b)


def forward_train(
    x: np.ndarray, weight: Any, bias: Any, eps: float, residual: np.ndarray | None = None, relu: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training forward (passes 1-3): returns (y, mean, biased var, invstd), all x.dtype; y channels-last."""
    cr = ChannelRows(x)
    dt = x.dtype.type
    xr = cr.rows(x)

    mean = (cr.fold(cr.run(_sum_kernel, xr, sums=1)[0]) / cr.count).astype(x.dtype)  # pass 1
    mean_row = cr.tile(mean)
    y, yr = cr.empty()
    var = (cr.fold(cr.run(_centre_kernel, xr, mean_row, out=(yr,), sums=1)[0]) / cr.count).astype(x.dtype)  # pass 2
    invstd = (1 / np.sqrt(var + dt(eps))).astype(x.dtype, copy=False)
    scale = invstd if weight is None else invstd * weight
    _normalise_rows(cr, yr, yr, None, scale, bias, None if residual is None else cr.rows(residual), relu)  # pass 3
    return y, mean, var, invstd


@_procs.kernel
def _sum_kernel(a: int, b: int, part: int, block: int, xr: np.ndarray, parts: np.ndarray) -> None:
    """Pass 1 on rows a..b: their column sums, into ``parts[part, 0]``."""
    total = parts[part, 0]
    total[...] = 0
    for r in _blocks(a, b, block):
        total += xr[r].sum(0)


@_procs.kernel
def _centre_kernel(a: int, b: int, part: int, block: int, xr: np.ndarray, mean_row: np.ndarray, yr: np.ndarray,
                   parts: np.ndarray) -> None:
    """Pass 2 on rows a..b: ``y <- x - mean``, and the column sums of its squares into ``parts[part, 0]``."""
    total = parts[part, 0]
    total[...] = 0
    for r in _blocks(a, b, block):
        yb = yr[r]
        np.subtract(xr[r], mean_row, out=yb)
        total += _dot_columns(yb, yb)


def forward_eval(
    x: np.ndarray, mean: Any, scale: Any, bias: Any, residual: np.ndarray | None = None, relu: bool = False
) -> np.ndarray:
    """Eval forward (pass 3 with fixed statistics): ``relu((x - mean) * scale + bias + residual)``, channels-last."""
    cr = ChannelRows(x)
    y, yr = cr.empty()
    _normalise_rows(cr, yr, cr.rows(x), cr.tile(mean), scale, bias, None if residual is None else cr.rows(residual), relu)
    return y


def backward(
    g: np.ndarray,
    x: np.ndarray,
    mean: Any,
    invstd: Any,
    weight: Any,
    training: bool,
    y: np.ndarray | None = None,
    need_x: bool = True,
    need_sums: bool = True,
    keep_masked: bool = False,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Backward of (fused) BN: returns (dx, dweight, dbias, g_r), each None when not computed.

    ``y`` given: the op ended in a ReLU whose output was y, and ``g_r = g * (y > 0)``; ``keep_masked``
    returns g_r (the residual's gradient). ``need_sums``: compute dweight and dbias (always when
    training and need_x, since dx uses them). ``training``: the statistics came from this batch, so dx
    has the two extra terms; else dx = k * g_r.
    """
    cr = ChannelRows(x)
    xr, gr = cr.rows(x), cr.rows(g)
    yr = None if y is None else cr.rows(y)
    masked, masked_r = cr.empty() if yr is not None else (None, None)
    mean_row = cr.tile(mean)
    sums = need_sums or (training and need_x)
    source = gr if masked_r is None else masked_r
    sum_g = sum_gd = None
    if masked_r is not None or sums:  # pass 1
        out = (masked_r,) if masked_r is not None else ()
        totals = cr.run(_backward_sums_kernel, gr, xr, yr, mean_row, sums, out=out, sums=2)
        sum_g, sum_gd = totals[0], totals[1]
    dweight = dbias = None
    if sums:
        sg, sgd = cr.fold(sum_g), cr.fold(sum_gd)
        dweight, dbias = (sgd * invstd).astype(x.dtype), sg.astype(x.dtype)
    if not need_x:
        return None, dweight, dbias, (masked if keep_masked else None)
    k = invstd if weight is None else invstd * weight
    k_row = cr.tile(k)
    if masked_r is not None and not keep_masked:  # dx overwrites g_r, which nobody else needs
        dx, dxr = masked, masked_r
    else:
        dx, dxr = cr.empty()
    if training:
        c1_row = cr.tile(-k * invstd * invstd * sgd / cr.count)
        c2_row = cr.tile(-k * sg / cr.count)
    else:
        c1_row = c2_row = None
    cr.run(_dx_kernel, source, xr, mean_row, k_row, c1_row, c2_row, out=(dxr,))  # pass 2
    return dx, dweight, dbias, (masked if keep_masked else None)


@_procs.kernel
def _backward_sums_kernel(a: int, b: int, part: int, block: int, gr: np.ndarray, xr: np.ndarray, yr: Any, mean_row: np.ndarray,
                          sums: bool, *rest: np.ndarray) -> None:
    """Backward pass 1 on rows a..b: ``g_r = g * (y > 0)`` into ``masked_r`` when y is given (``rest`` is
    (masked_r, parts) then, else (parts,)), and the column sums of g_r and g_r * d into ``parts[part]``."""
    masked_r, parts = (rest[0], rest[1]) if yr is not None else (None, rest[0])
    sum_g, sum_gd = parts[part, 0], parts[part, 1]
    sum_g[...] = 0
    sum_gd[...] = 0
    length = gr.shape[1]
    scratch, mask = np.empty((block, length), dtype=gr.dtype), np.empty((block, length), dtype=bool)
    zero_row = np.zeros(length, dtype=gr.dtype)
    for r in _blocks(a, b, block):
        gb = gr[r]
        n = gb.shape[0]
        if masked_r is not None:
            np.greater(yr[r], zero_row, out=mask[:n])
            gb = np.multiply(gb, mask[:n], out=masked_r[r])
        if sums:
            sum_g += gb.sum(0)
            sum_gd += _dot_columns(gb, np.subtract(xr[r], mean_row, out=scratch[:n]))


@_procs.kernel
def _dx_kernel(a: int, b: int, part: int, block: int, source: np.ndarray, xr: np.ndarray, mean_row: np.ndarray,
               k_row: np.ndarray, c1_row: Any, c2_row: Any, dxr: np.ndarray) -> None:
    """Backward pass 2 on rows a..b: ``dx = k * g_r`` (+ ``c1 * d + c2`` in training, when c1_row is given)."""
    scratch = np.empty((block, source.shape[1]), dtype=source.dtype)
    for r in _blocks(a, b, block):
        db = dxr[r]
        np.multiply(source[r], k_row, out=db)
        if c1_row is not None:
            s = scratch[: db.shape[0]]
            np.subtract(xr[r], mean_row, out=s)
            s *= c1_row
            db += s
            db += c2_row


__all__ = [
    "BLOCK_BYTES", "MAX_CHANNELS", "ROW_VALUES", "ChannelRows", "backward", "forward_eval", "forward_train",
    "row_length", "usable",
]
