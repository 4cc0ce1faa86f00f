"""BatchNorm training kernels for channels-last arrays on the CPU: few memory passes, chunks over the cores.

The convolutions hand BatchNorm channels-last memory (values NCHW, memory NHWC), i.e. a C-contiguous
matrix ``X (M, C)`` with M = N*H*W rows, one column per channel. The generic kernels in
:mod:`minires.ops.normalization` stay the reference (and the path on cupy and for other layouts);
these compute the same thing with each pass over a cache-sized chunk of rows, chunks shared by the
cores (:mod:`minires.ops._parallel`), and BN folded into one per-channel scale and shift::

    mean = sum_m X / M                                    pass 1 (reads X)
    var  = sum_m (X - mean)^2 / M                         pass 2 (reads X; X - mean lives in cache)
    Y    = X * scale + shift,   scale = weight * invstd,  shift = bias - mean * scale    pass 3 (reads X, writes Y)

Backward (``k = weight * invstd``, ``d = X - mean``)::

    sum_g = sum_m G,  sum_gd = sum_m G * d                pass 1 (reads G and X; d in cache)
    dX    = k * (G - sum_g / M - d * invstd^2 * sum_gd / M)   pass 2 (reads G and X, writes dX)

No full-size temporary is made (the generic kernels write ``X - mean`` into the output first and read
it back). Statistics are summed per chunk, then the chunks' partial sums are added, which also keeps
float32 rounding of the long sums small.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minires.ops._parallel import over_batch

_CHUNK_BYTES = 1 << 18  # 256 KiB of X per chunk: X's chunk and its temporary fit in L2


def channels_last_matrix(a3: Any) -> Any | None:
    """The (M, C) matrix behind an (N, C, K) numpy array whose memory is channels-last, else None."""
    if type(a3) is not np.ndarray:
        return None
    rows = a3.transpose(0, 2, 1)
    if not rows.flags.c_contiguous:
        return None
    return rows.reshape(-1, a3.shape[1])


def _widen(k: int, c: int) -> int:
    """Rows r to fold into one: numpy's inner loops run along the last axis, and a per-channel op on
    (M, C) with C = 16 runs loops of 16; viewed as (M/r, r*C) (with the per-channel vectors tiled r
    times) they run r*C long. r divides the K rows of a sample, so chunks stay whole samples."""
    r = 1
    for cand in range(1, k + 1):
        if k % cand == 0 and cand * c <= _WIDE:
            r = cand
    return r


_WIDE = 1024  # elements in one row of the widened view


class _Wide:
    """X (M, C) viewed as (M/r, r*C), chunked over whole samples; per-channel vectors tiled to r*C."""

    def __init__(self, x2: Any, n: int) -> None:
        self.c = x2.shape[1]
        k = x2.shape[0] // n
        self.r = _widen(k, self.c)
        self.n, self.rows = n, k // self.r

    def view(self, a2: Any) -> Any:
        return a2.reshape(-1, self.r * self.c)

    def tile(self, v: Any) -> Any:
        return np.tile(v, self.r)

    def fold(self, v: Any) -> Any:
        """(r*C,) partial sums -> (C,)."""
        return v.reshape(self.r, self.c).sum(axis=0)

    def run(self, work: Any, itemsize: int) -> list[Any]:
        """``work(row_start, row_stop)`` over chunks of whole samples of the widened view."""
        rows = self.rows
        return over_batch(np, self.n, rows * self.r * self.c * itemsize, lambda a, b: work(a * rows, b * rows), _CHUNK_BYTES)


def forward_train(x2: Any, out2: Any, n: int, weight: Any, bias: Any, eps: float) -> tuple[Any, Any, Any]:
    """Normalise X (M, C) with its batch statistics into ``out2`` (M, C); returns (mean, biased var, invstd)."""
    dt = x2.dtype
    m = x2.shape[0]
    wide = _Wide(x2, n)
    xw, ow = wide.view(x2), wide.view(out2)
    mean = (wide.fold(sum(wide.run(lambda a, b: xw[a:b].sum(axis=0), dt.itemsize))) / dt.type(m)).astype(dt, copy=False)
    mean_w = wide.tile(mean)

    def sum_sq(a: int, b: int) -> Any:
        d = xw[a:b] - mean_w
        d *= d
        return d.sum(axis=0)

    var = (wide.fold(sum(wide.run(sum_sq, dt.itemsize))) / dt.type(m)).astype(dt, copy=False)
    invstd = (1 / np.sqrt(var + dt.type(eps))).astype(dt, copy=False)
    scale = invstd if weight is None else invstd * weight
    shift = -mean * scale if bias is None else bias - mean * scale
    scale_w, shift_w = wide.tile(scale), wide.tile(shift)

    def normalise(a: int, b: int) -> None:
        np.multiply(xw[a:b], scale_w, out=ow[a:b])
        ow[a:b] += shift_w

    wide.run(normalise, dt.itemsize)
    return mean, var, invstd


def backward_train(g2: Any, x2: Any, dx2: Any | None, n: int, mean: Any, invstd: Any, weight: Any) -> tuple[Any, Any]:
    """Gradients of :func:`forward_train`: fills ``dx2`` (M, C) when given; returns (dweight, dbias)."""
    dt = x2.dtype
    m = x2.shape[0]
    wide = _Wide(x2, n)
    xw, gw = wide.view(x2), wide.view(g2)
    mean_w = wide.tile(mean)

    def sums(a: int, b: int) -> tuple[Any, Any]:
        d = xw[a:b] - mean_w
        d *= gw[a:b]
        return gw[a:b].sum(axis=0), d.sum(axis=0)

    parts = wide.run(sums, dt.itemsize)
    sum_g = wide.fold(sum(p[0] for p in parts))
    sum_gd = wide.fold(sum(p[1] for p in parts))
    if dx2 is not None:
        dxw = wide.view(dx2)
        k = invstd if weight is None else invstd * weight
        coef_w = wide.tile(-(invstd * invstd) * sum_gd / dt.type(m))
        shift_w = wide.tile(-sum_g / dt.type(m))
        k_w = wide.tile(k)

        def input_grad(a: int, b: int) -> None:
            d = dxw[a:b]
            np.subtract(xw[a:b], mean_w, out=d)
            d *= coef_w
            d += gw[a:b]
            d += shift_w
            d *= k_w

        wide.run(input_grad, dt.itemsize)
    return sum_gd * invstd, sum_g
