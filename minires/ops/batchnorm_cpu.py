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


def _chunks(x2: Any, n: int, work: Any) -> list[Any]:
    """``work(row_start, row_stop)`` over chunks of whole samples (K rows each) of X (M, C)."""
    k = x2.shape[0] // n
    return over_batch(np, n, k * x2.shape[1] * x2.itemsize, lambda a, b: work(a * k, b * k), _CHUNK_BYTES)


def forward_train(x2: Any, out2: Any, n: int, weight: Any, bias: Any, eps: float) -> tuple[Any, Any, Any]:
    """Normalise X (M, C) with its batch statistics into ``out2`` (M, C); returns (mean, biased var, invstd)."""
    dt = x2.dtype
    m = x2.shape[0]
    mean = (sum(_chunks(x2, n, lambda a, b: x2[a:b].sum(axis=0))) / dt.type(m)).astype(dt, copy=False)

    def sum_sq(a: int, b: int) -> Any:
        d = x2[a:b] - mean
        d *= d
        return d.sum(axis=0)

    var = (sum(_chunks(x2, n, sum_sq)) / dt.type(m)).astype(dt, copy=False)
    invstd = (1 / np.sqrt(var + dt.type(eps))).astype(dt, copy=False)
    scale = invstd if weight is None else invstd * weight
    shift = -mean * scale if bias is None else bias - mean * scale

    def normalise(a: int, b: int) -> None:
        np.multiply(x2[a:b], scale, out=out2[a:b])
        out2[a:b] += shift

    _chunks(x2, n, normalise)
    return mean, var, invstd


def backward_train(
    g2: Any, x2: Any, dx2: Any | None, n: int, mean: Any, invstd: Any, weight: Any
) -> tuple[Any, Any]:
    """Gradients of :func:`forward_train`: fills ``dx2`` (M, C) when given; returns (dweight, dbias)."""
    dt = x2.dtype
    m = x2.shape[0]

    def sums(a: int, b: int) -> tuple[Any, Any]:
        d = x2[a:b] - mean
        d *= g2[a:b]
        return g2[a:b].sum(axis=0), d.sum(axis=0)

    parts = _chunks(x2, n, sums)
    sum_g = sum(p[0] for p in parts)
    sum_gd = sum(p[1] for p in parts)
    if dx2 is not None:
        k = invstd if weight is None else invstd * weight
        coef_d = -(invstd * invstd) * sum_gd / dt.type(m)
        shift = -sum_g / dt.type(m)

        def input_grad(a: int, b: int) -> None:
            d = dx2[a:b]
            np.subtract(x2[a:b], mean, out=d)
            d *= coef_d
            d += g2[a:b]
            d += shift
            d *= k

        _chunks(x2, n, input_grad)
    return sum_gd * invstd, sum_g
