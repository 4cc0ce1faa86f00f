"""Winograd F(2x2, 3x3) convolution (Lavin & Gray, 2015) for 3x3, stride-1, undilated, ungrouped convs.

A 3x3 convolution computes each 2x2 block of outputs from a 4x4 tile of input; done directly that is
2*2*3*3 = 36 multiplies per input/output channel pair. Winograd's minimal filtering algorithm does
it with 4*4 = 16, 2.25x fewer::

    Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A          d: 4x4 input tile, g: 3x3 kernel, Y: 2x2 output

         [1  0 -1  0]          [ 1    0    0 ]
   B^T = [0  1  1  0]      G = [1/2  1/2  1/2]      A^T = [1  1  1  0]
         [0 -1  1  0]          [1/2 -1/2  1/2]            [0  1 -1 -1]
         [0  1  0 -1]          [ 0    0    1 ]

(⊙ is the elementwise product.) Summed over input channels the elementwise product becomes, for each of
the 16 positions (a, b) of the 4x4 transformed tile, a matrix product over channels::

    V[a,b] (P, C)  = (B^T d B)[a,b]  for all P = N * tH * tW tiles (input transform)
    U[a,b] (C, O)  = (G g G^T)[a,b]  for all kernels                (weight transform)
    M[a,b] (P, O)  = V[a,b] @ U[a,b]                                 (16 batched GEMMs)
    Y              = A^T M A, tile by tile                           (output transform)

Backward is the same algorithm's adjoint: the input gradient of a stride-1 3x3 convolution is itself a
3x3 convolution of the output gradient, with the kernel flipped and its in/out channels swapped and
padding ``2 - p`` on each side; the weight gradient is ``dU[a,b] = V[a,b]^T @ (A dY A^T)[a,b]`` summed
over tiles, then ``dg = G^T dU G``.

Why 2x2 output tiles: larger tiles save more multiplies (F(4x4, 3x3) does 4x fewer than direct, against
2.25x), but their transform matrices hold fractions like 1/6 and 1/24 and multiples up to 8, whose
rounding costs float32 accuracy as the tile grows (as Lavin & Gray note), and they need more memory
passes per output. F(2x2, 3x3)'s entries are 0, +-1 and 1/2, exact in binary: measured
here, its float32 outputs are as close to a float64 reference as im2col's (max relative error 2e-7 to
6e-7 for 16 to 256 channels, im2col 3e-7 to 5e-7). On a NumPy CPU engine the transforms are memory
passes, and with the 16-64 channels of CIFAR nets they, not the multiplies, are most of the cost, so the
cheapest transforms win; F(4x4, 3x3) was not tried.

Layout: the input is read channels-last (NHWC), copied per batch chunk into a zero-padded buffer with
even and odd columns apart (so each transform step reads long contiguous runs), transformed into V of
shape (16, P_chunk, C), multiplied, and the output transform writes straight into the channels-last
output. Chunks are cache-sized and run over the cores (:mod:`minires.ops._parallel`). Everything here
takes its array module from its inputs, so it runs on cupy too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minires.backend import xp_of
from minires.ops import _procs
from minires.ops._parallel import over_batch

Pads = tuple[int, int, int, int]  # (top, bottom, left, right)

_CHUNK_BYTES = 1 << 19  # ~512 KiB of padded input per chunk; its V (about 4x that) stays in L2/L3


def supports(kernel: tuple[int, int], stride: tuple[int, int], pads: Pads, dilation: tuple[int, int], groups: int) -> bool:
    """Whether this Winograd path computes the convolution: 3x3, stride 1, dilation 1, groups 1, padding 0..2.

    Padding above 2 would need negative padding in the input gradient's convolution.
    """
    return kernel == (3, 3) and stride == (1, 1) and dilation == (1, 1) and groups == 1 and all(0 <= p <= 2 for p in pads)


def _tiles(size: int) -> int:
    return -(-size // 2)


def _g_times(xp: Any, k: Any) -> Any:
    """``G @ k`` along axis 0: 3 kernel rows -> 4, ``[k0, (k0 + k1 + k2)/2, (k0 - k1 + k2)/2, k2]``."""
    half = k.dtype.type(0.5)
    return xp.stack([k[0], half * (k[0] + k[1] + k[2]), half * (k[0] - k[1] + k[2]), k[2]])


def _gt_times(xp: Any, d: Any) -> Any:
    """``G^T @ d`` along axis 0: 4 rows -> 3, ``[d0 + (d1 + d2)/2, (d1 - d2)/2, (d1 + d2)/2 + d3]``."""
    half = d.dtype.type(0.5)
    return xp.stack([d[0] + half * (d[1] + d[2]), half * (d[1] - d[2]), half * (d[1] + d[2]) + d[3]])


def weight_transform(w: Any) -> Any:
    """``U[a, b] = (G g G^T)[a, b]``: (O, C, 3, 3) -> (16, C, O), in w's dtype."""
    xp = xp_of(w)
    g = w.transpose(2, 3, 1, 0)  # (3, 3, C, O)
    u = _g_times(xp, _g_times(xp, g).swapaxes(0, 1)).swapaxes(0, 1)  # G g, then (G g) G^T: (4, 4, C, O)
    return xp.ascontiguousarray(u.reshape(16, *u.shape[2:]))


def weight_transform_adjoint(du: Any) -> Any:
    """``dg = G^T dU G``: (16, C, O) -> (O, C, 3, 3), the gradient through :func:`weight_transform`."""
    xp = xp_of(du)
    d = du.reshape(4, 4, *du.shape[1:])
    g = _gt_times(xp, _gt_times(xp, d).swapaxes(0, 1)).swapaxes(0, 1)  # (3, 3, C, O)
    return xp.ascontiguousarray(g.transpose(3, 2, 0, 1))


def _padded_chunk(nhwc: Any, a: int, b: int, pads: Pads, out_hw: tuple[int, int]) -> Any:
    """Samples a..b of an NHWC array, zero-padded to 2*tH + 2 rows and 2*tW + 2 columns, columns split by parity.

    Returns (b-a, 2*tH + 2, 2, tW + 1, C): ``[:, r, q, t]`` is padded pixel (r, 2*t + q). With even and
    odd columns apart, every slice the transform reads is a contiguous run of (tW, C) values.
    """
    xp = xp_of(nhwc)
    _, h, w, c = nhwc.shape
    pt, _, pl, _ = pads
    hp, half = 2 * _tiles(out_hw[0]) + 2, _tiles(out_hw[1]) + 1  # >= h + pt + pb rows, w + pl + pr columns
    padded = xp.zeros((b - a, hp, 2, half, c), dtype=nhwc.dtype)
    for q in (0, 1):
        first = (q - pl) % 2  # the first input column that lands on parity q
        count = len(range(first, w, 2))
        start = (pl + first) // 2
        padded[:, pt : pt + h, q, start : start + count] = nhwc[a:b, :, first::2]
    return padded


def input_transform(padded: Any) -> Any:
    """``V[a, b] = (B^T d B)[a, b]`` for every 4x4 tile d (stride 2) of a padded chunk from :func:`_padded_chunk`.

    (n, 2*tH + 2, 2, tW + 1, C) -> (16, n*tH*tW, C), tiles in (n, tH, tW) order. B^T is applied to
    whole image rows first (tile row i of every tile row is ``padded[:, i::2]``), then along the
    columns (tile column j of every tile is parity j % 2, offset j // 2): numpy's inner loops run over
    long contiguous runs, not over the C values of one pixel.
    """
    xp = xp_of(padded)
    n, hp, _, half, c = padded.shape
    th, tw = (hp - 2) // 2, half - 1
    d = [padded[:, i : i + 2 * th : 2] for i in range(4)]  # row i of every tile row: (n, tH, 2, tW + 1, C)
    rows = xp.empty((4, n, th, 2, half, c), dtype=padded.dtype)  # B^T d: [d0 - d2, d1 + d2, d2 - d1, d1 - d3]
    xp.subtract(d[0], d[2], out=rows[0])
    xp.add(d[1], d[2], out=rows[1])
    xp.subtract(d[2], d[1], out=rows[2])
    xp.subtract(d[1], d[3], out=rows[3])
    e = [rows[:, :, :, j % 2, j // 2 : j // 2 + tw] for j in range(4)]  # column j of every tile: (4, n, tH, tW, C)
    v = xp.empty((4, 4, n, th, tw, c), dtype=padded.dtype)  # (B^T d) B, the same along the columns
    xp.subtract(e[0], e[2], out=v[:, 0])
    xp.add(e[1], e[2], out=v[:, 1])
    xp.subtract(e[2], e[1], out=v[:, 2])
    xp.subtract(e[1], e[3], out=v[:, 3])
    return v.reshape(16, n * th * tw, c)


def output_transform(m: Any, out: Any) -> None:
    """``Y = A^T M A`` per tile, written into ``out`` (n, 2*tH, 2*tW, O) (any strides).

    ``m`` is (16, n*tH*tW, O) in the tile order of :func:`input_transform`.
    """
    xp = xp_of(m)
    n, h2, w2, o = out.shape
    th, tw = h2 // 2, w2 // 2
    m6 = m.reshape(4, 4, n, th, tw, o)
    rows = xp.empty((2, 4, n, th, tw, o), dtype=m.dtype)  # A^T M: [m0 + m1 + m2, m1 - m2 - m3]
    xp.add(m6[0], m6[1], out=rows[0])
    rows[0] += m6[2]
    xp.subtract(m6[1], m6[2], out=rows[1])
    rows[1] -= m6[3]
    y = out.reshape(n, th, 2, tw, 2, o).transpose(2, 4, 0, 1, 3, 5)  # y[r, s] = out[:, 2i + r, 2j + s]
    xp.add(rows[:, 0], rows[:, 1], out=y[:, 0])
    y[:, 0] += rows[:, 2]
    xp.subtract(rows[:, 1], rows[:, 2], out=y[:, 1])
    y[:, 1] -= rows[:, 3]


def output_transform_adjoint(padded_grad: Any) -> Any:
    """``Z = A dY A^T`` per 2x2 tile: (n, 2*tH, 2*tW, O) -> (16, n*tH*tW, O), the adjoint of :func:`output_transform`."""
    xp = xp_of(padded_grad)
    n, h2, w2, o = padded_grad.shape
    th, tw = h2 // 2, w2 // 2
    dy = padded_grad.reshape(n, th, 2, tw, 2, o)
    rows = xp.empty((4, n, th, tw, 2, o), dtype=padded_grad.dtype)  # A dY: [y0, y0 + y1, y0 - y1, -y1]
    y0, y1 = dy[:, :, 0], dy[:, :, 1]
    rows[0] = y0
    xp.add(y0, y1, out=rows[1])
    xp.subtract(y0, y1, out=rows[2])
    xp.negative(y1, out=rows[3])
    z = xp.empty((4, 4, n, th, tw, o), dtype=padded_grad.dtype)
    r0, r1 = rows[..., 0, :], rows[..., 1, :]
    z[:, 0] = r0
    xp.add(r0, r1, out=z[:, 1])
    xp.subtract(r0, r1, out=z[:, 2])
    xp.negative(r1, out=z[:, 3])
    return z.reshape(16, n * th * tw, o)


def _chunk_target(weight_bytes: int) -> int:
    """Bytes of input per chunk: cache-sized, but no smaller than the transformed weights, which every
    chunk's GEMMs read again (deep layers with few pixels and many channels get a few big chunks)."""
    return max(_CHUNK_BYTES, weight_bytes)


def _sample_bytes(shape: tuple[int, ...], itemsize: int, channels: int) -> int:
    return (shape[1] + 4) * (shape[2] + 4) * channels * itemsize


def conv3x3(x: Any, u: Any, pads: Pads) -> Any:
    """The convolution of x (N, C, H, W) with transformed weights ``u = weight_transform(w)`` (16, C, O).

    Returns (N, O, oH, oW) with oH = H + pt + pb - 2 (likewise oW), as a channels-last view (memory
    NHWC) like :func:`minires.ops.conv.conv2d`'s output. On NumPy the batch is shared with the worker
    processes of :mod:`minires.ops._procs` when it is big enough.
    """
    xp = xp_of(x)
    n, c, h, w = x.shape
    o = u.shape[2]
    oh, ow = h + pads[0] + pads[1] - 2, w + pads[2] + pads[3] - 2
    nhwc = x.transpose(0, 2, 3, 1)
    exact = oh % 2 == 0 and ow % 2 == 0
    shape = (n, 2 * _tiles(oh), 2 * _tiles(ow), o)
    out = _procs.empty(shape, x.dtype) if xp is np else xp.empty(shape, dtype=x.dtype)
    plan = _procs.plan(n, x.nbytes + out.nbytes, x, u)
    plan.run(_conv3x3_rows, nhwc, u, pads, (oh, ow), out=(out,))
    if not exact:
        out = xp.ascontiguousarray(out[:, :oh, :ow])
    return out.transpose(0, 3, 1, 2)


@_procs.kernel
def _conv3x3_rows(a: int, b: int, part: int, nhwc: Any, u: Any, pads: Pads, out_hw: tuple[int, int], out: Any) -> None:
    """Samples a..b of :func:`conv3x3` (NHWC input, (N, 2*tH, 2*tW, O) output), in cache-sized chunks."""
    xp = xp_of(nhwc)
    c, o = nhwc.shape[3], u.shape[2]

    def work(s: int, e: int) -> None:
        v = input_transform(_padded_chunk(nhwc, a + s, a + e, pads, out_hw))
        output_transform(xp.matmul(v, u), out[a + s : a + e])

    over_batch(xp, b - a, _sample_bytes(nhwc.shape, nhwc.dtype.itemsize, max(c, o)), work, _chunk_target(u.nbytes), blas=True)


# The transform of the flipped kernel is a permutation of the kernel's: G J = P G, where J reverses the 3
# kernel taps and P swaps rows 0 and 3 of G, so G (J g J) G^T = P (G g G^T) P^T, i.e. U'[a, b] = U[p(a), p(b)].
_FLIPPED = [4 * p + q for p in (3, 1, 2, 0) for q in (3, 1, 2, 0)]


def flipped_transform(u: Any) -> Any:
    """``weight_transform(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))`` from ``u = weight_transform(w)``:
    (16, C, O) -> (16, O, C), the 16 positions permuted (one copy) and the channel axes swapped (a view)."""
    return u[_FLIPPED].swapaxes(1, 2)


def conv3x3_input_grad(grad: Any, w: Any, pads: Pads, u: Any = None) -> Any:
    """dL/dx of a stride-1 3x3 convolution: grad (N, O, oH, oW), w (O, C, 3, 3) -> (N, C, H, W).

    dx[h] = sum_i grad[h + pt - i] w[i] is a 3x3 convolution of grad, padded by 2 - p on each side,
    with the kernel flipped (w[:, :, ::-1, ::-1]) and its channel axes swapped. ``u``: the forward's
    ``weight_transform(w)``, if kept, whose permutation is the flipped kernel's transform.
    """
    pt, pb, pl, pr = pads
    if u is None:
        u = weight_transform(w)
    return conv3x3(grad, flipped_transform(u), (2 - pt, 2 - pb, 2 - pl, 2 - pr))


def conv3x3_weight_grad(x: Any, grad: Any, pads: Pads) -> Any:
    """dL/dw of a stride-1 3x3 convolution: x (N, C, H, W), grad (N, O, oH, oW) -> (O, C, 3, 3).

    Per chunk: recompute the input tiles V, transform the output gradient Z = A dY A^T, and accumulate
    dU[a, b] += V[a, b]^T @ Z[a, b]; then dg = G^T dU G. Nothing batch-sized is kept from the forward.
    """
    xp = xp_of(x)
    n, c = x.shape[:2]
    o, oh, ow = grad.shape[1], grad.shape[2], grad.shape[3]
    plan = _procs.plan(n, x.nbytes + grad.nbytes, x, grad)
    shape = (plan.parts, 16, c, o)
    parts = _procs.empty(shape, x.dtype) if xp is np else xp.empty(shape, dtype=x.dtype)
    plan.run(_weight_grad_rows, x.transpose(0, 2, 3, 1), grad.transpose(0, 2, 3, 1), pads, (oh, ow), out=(parts,))
    return weight_transform_adjoint(parts.sum(axis=0) if plan.parts > 1 else parts[0])


@_procs.kernel
def _weight_grad_rows(a: int, b: int, part: int, nhwc: Any, g_nhwc: Any, pads: Pads, out_hw: tuple[int, int], parts: Any) -> None:
    """``parts[part] = dU`` summed over samples a..b (see :func:`conv3x3_weight_grad`)."""
    xp = xp_of(nhwc)
    c, o = nhwc.shape[3], g_nhwc.shape[3]
    (oh, ow), th, tw = out_hw, _tiles(out_hw[0]), _tiles(out_hw[1])

    def work(s: int, e: int) -> Any:
        v = input_transform(_padded_chunk(nhwc, a + s, a + e, pads, out_hw))
        gpad = g_nhwc[a + s : a + e]
        if (2 * th, 2 * tw) != (oh, ow):
            gpad = xp.zeros((e - s, 2 * th, 2 * tw, o), dtype=g_nhwc.dtype)
            gpad[:, :oh, :ow] = g_nhwc[a + s : a + e]
        return xp.matmul(v.transpose(0, 2, 1), output_transform_adjoint(gpad))  # (16, C, O)

    target = _chunk_target(16 * c * o * nhwc.dtype.itemsize)
    sums = over_batch(xp, b - a, _sample_bytes(nhwc.shape, nhwc.dtype.itemsize, max(c, o)), work, target, blas=True)
    total = parts[part]
    total[...] = sums[0]  # over_batch gives at least one chunk (an empty slice is one chunk of none)
    for p in sums[1:]:
        total += p
