"""Cache-sized im2col convolution on the CPU: the columns of one chunk of the batch at a time.

The whole-batch path of :mod:`minires.ops.conv` builds the column matrix of the entire batch (kH*kW
times the input: 72 MB for a 16-channel 32x32 layer at batch 128), multiplies it, and keeps it for the
weight gradient. Here the same algorithm runs chunk by chunk, with the chunks shared by the cores
(:mod:`minires.ops._parallel`, BLAS single-threaded meanwhile)::

    forward         for each chunk:  cols = im2col(x[chunk])            (~1 MiB: stays in cache)
                                     out[chunk] = cols @ W2.T (+ bias)   (written into its rows of out)
    input grad      for each chunk:  blocks[i, j] = dout[chunk] @ W2[:, (i, j)]
                                     dx[chunk] = col2im of the blocks    (:func:`~minires.ops.conv.fold_into`)
    weight grad     for each chunk:  cols = im2col(x[chunk]) again;  dW2 += dout[chunk].T @ cols

Nothing batch-sized is kept for backward but x itself (which the layer before keeps anyway), so a
network's peak memory no longer holds one column matrix per layer. The values are those of the
whole-batch path up to the order of float additions; that path stays the reference, the teaching
path and the GPU path (where one big GEMM is what the hardware wants).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minires.backend import xp_of
from minires.ops._parallel import over_batch
from minires.ops.conv import fold_into, group_columns, offset_blocks, weight_from_matrix, weight_matrix
from minires.ops.geometry import Window2d

_CHUNK_BYTES = 1 << 20  # ~1 MiB of columns (or gradient blocks) per chunk


def _target(weight_bytes: int) -> int:
    """Bytes of columns per chunk: cache-sized, but no smaller than the weights, which every chunk's GEMM
    reads again (wide layers with small maps, e.g. 512 channels at 4x4, get a few big chunks)."""
    return max(_CHUNK_BYTES, weight_bytes)


def _column_bytes(x_shape: tuple[int, ...], window: Window2d, itemsize: int) -> int:
    """Bytes of one sample's columns: oH*oW rows of kH*kW*C values."""
    oh, ow = window.output_size
    return oh * ow * window.kernel[0] * window.kernel[1] * x_shape[1] * itemsize


def _rows(a: int, b: int, window: Window2d) -> slice:
    """The pixel rows (n, oh, ow) of samples a..b in an (N*oH*oW, ...) matrix."""
    per_sample = window.output_size[0] * window.output_size[1]
    return slice(a * per_sample, b * per_sample)


def forward(x: Any, weight: Any, bias: Any, window: Window2d, groups: int) -> Any:
    """The convolution of x (N, C, H, W) with weight (O, C/g, kH, kW) (+ bias): (N, O, oH, oW), a channels-last view."""
    xp = xp_of(x)
    n, o = x.shape[0], weight.shape[0]
    og = o // groups
    wmat = weight_matrix(weight)  # (O, kH*kW*C/g)
    out = xp.empty((n * window.output_size[0] * window.output_size[1], o), dtype=x.dtype)

    def work(a: int, b: int) -> None:
        dest = out[_rows(a, b, window)]
        for g, cols in enumerate(group_columns(x[a:b], window, groups)):
            if groups == 1:
                xp.matmul(cols, wmat.T, out=dest)
            else:
                dest[:, g * og : (g + 1) * og] = cols @ wmat[g * og : (g + 1) * og].T
        if bias is not None:
            dest += bias

    over_batch(xp, n, _column_bytes(x.shape, window, x.dtype.itemsize), work, _target(weight.nbytes), blas=True)
    return out.reshape(n, *window.output_size, o).transpose(0, 3, 1, 2)


def input_grad(grad: Any, weight: Any, x_shape: tuple[int, ...], window: Window2d, groups: int) -> Any:
    """dL/dx (N, C, H, W) from the output gradient (N, O, oH, oW): a channels-last view of a new array."""
    xp = xp_of(grad)
    n, c, h, w = x_shape
    o = weight.shape[0]
    cg, og = c // groups, o // groups
    pt, pb, pl, pr = window.padding
    wmat = weight_matrix(weight)
    g_nhwc = grad.transpose(0, 2, 3, 1)  # a view; contiguous when grad is channels-last
    padded = xp.empty((n, h + pt + pb, w + pl + pr, c), dtype=grad.dtype)

    def work(a: int, b: int) -> None:
        gm = xp.ascontiguousarray(g_nhwc[a:b]).reshape(-1, o)
        for g in range(groups):
            blocks = offset_blocks(gm[:, g * og : (g + 1) * og], wmat[g * og : (g + 1) * og], b - a, window)
            fold_into(padded[a:b, :, :, g * cg : (g + 1) * cg], blocks, window)

    sample = max(_column_bytes(x_shape, window, grad.dtype.itemsize), padded.nbytes // max(n, 1))
    over_batch(xp, n, sample, work, _target(weight.nbytes), blas=True)
    return padded[:, pt : pt + h, pl : pl + w].transpose(0, 3, 1, 2)


def weight_grad(x: Any, grad: Any, weight_shape: tuple[int, ...], window: Window2d, groups: int) -> Any:
    """dL/dweight (O, C/g, kH, kW): the columns of each chunk rebuilt and multiplied by its output gradient."""
    xp = xp_of(x)
    n, o = x.shape[0], weight_shape[0]
    og = o // groups
    g_nhwc = grad.transpose(0, 2, 3, 1)

    def work(a: int, b: int) -> Any:
        gm = xp.ascontiguousarray(g_nhwc[a:b]).reshape(-1, o)
        cols = group_columns(x[a:b], window, groups)
        return xp.concatenate([cols[g].T @ gm[:, g * og : (g + 1) * og] for g in range(groups)], axis=1)

    target = _target(x.dtype.itemsize * int(np.prod(weight_shape)))
    parts = over_batch(xp, n, _column_bytes(x.shape, window, x.dtype.itemsize), work, target, blas=True)
    gw_t = parts[0]
    for part in parts[1:]:
        gw_t += part
    return weight_from_matrix(gw_t, weight_shape)
