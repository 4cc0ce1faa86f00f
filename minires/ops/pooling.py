"""2-D pooling: max, average and adaptive (any output size), forward and backward on raw arrays.

Windowed pools loop over the kH*kW kernel offsets, each step one strided slice of the padded
input covering every output pixel at once (no loop over batch or pixels). Output sizes follow
PyTorch, ``ceil_mode`` included (the rule lives in :mod:`minires.ops.geometry`). Each Function checks
its own arguments, so ``MaxPool2dFunction.apply(x, 2)`` fails as clearly as ``max_pool2d(x, 2)``.
"""

from __future__ import annotations

from typing import Any

from minires.autograd.function import Context, Function
from minires.backend import add_at, xp_of
from minires.ops._util import as_tensor, check_float
from minires.ops.geometry import IntPair, Window2d
from minires.tensor import Tensor


def _pool_window(
    name: str, x: Any, kernel_size: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool
) -> Window2d:
    """The checked window of a pool over raw x (N, C, H, W); padding at most half the kernel (PyTorch's rule)."""
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D input (N, C, H, W) or 3-D (C, H, W), got shape {tuple(x.shape)}")
    check_float(name, x)
    window = Window2d.of(name, x.shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
    pad, kernel = (window.padding[0], window.padding[2]), window.kernel
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(f"{name}: padding {pad} must be at most half of kernel_size {kernel}")
    return window


def _padded(x: Any, window: Window2d, fill: float) -> Any:
    """x (N, C, H, W) inside a buffer (N, C, eH, eW) filled with ``fill``, offset by the leading padding.

    The buffer covers every window (ceil mode may reach past the bottom/right padding)."""
    xp = xp_of(x)
    n, c, h, w = x.shape
    (pt, pl), extent = window.pad_before, window.extent
    eh, ew = max(extent[0], h + pt), max(extent[1], w + pl)
    if (eh, ew) == (h, w):
        return x
    buf = xp.full((n, c, eh, ew), fill, dtype=x.dtype)
    buf[:, :, pt : pt + h, pl : pl + w] = x
    return buf


def _unpadded(buf: Any, window: Window2d) -> Any:
    """The input's part (N, C, H, W) of a buffer made like :func:`_padded`'s."""
    (pt, pl), (h, w) = window.pad_before, window.input_size
    return buf[:, :, pt : pt + h, pl : pl + w]


def _tap(a: Any, k: int, window: Window2d) -> Any:
    """The strided slice of a padded buffer seen by kernel offset k (row-major) of every window: (N, C, oH, oW)."""
    kw, (sh, sw), (dh, dw), (oh, ow) = window.kernel[1], window.stride, window.dilation, window.output_size
    r, q = (k // kw) * dh, (k % kw) * dw
    return a[:, :, r : r + sh * (oh - 1) + 1 : sh, q : q + sw * (ow - 1) + 1 : sw]


class MaxPool2dFunction(Function):
    """Max over each window; returns (values, flat indices into H*W of each input plane).

    ``MaxPool2dFunction.apply(x, kernel_size, stride, padding, dilation, ceil_mode)`` on a 4-D input,
    all positional, as :func:`max_pool2d`'s arguments (``stride`` None means the kernel size);
    :func:`max_pool2d` adds defaults and unbatched input.
    """

    @staticmethod
    def forward(
        ctx: Context, x: Any, kernel_size: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool
    ) -> Any:
        window = _pool_window("max_pool2d", x, kernel_size, stride, padding, dilation, ceil_mode)
        xp = xp_of(x)
        w = x.shape[3]
        buf = _padded(x, window, float("-inf"))
        best = _tap(buf, 0, window).copy()
        arg = xp.zeros(best.shape, dtype=xp.int64)
        for k in range(1, window.kernel[0] * window.kernel[1]):
            v = _tap(buf, k, window)
            take = (v > best) | xp.isnan(v)  # strict: the first maximum in row-major window order wins
            xp.copyto(best, v, where=take)
            arg[take] = k
        # offset k of window (oh, ow) sits at input row oh*sH - pT + (k // kW)*dH (likewise columns)
        (sh, sw), (pt, pl), (dh, dw), kw = window.stride, window.pad_before, window.dilation, window.kernel[1]
        rows = (xp.arange(window.output_size[0]) * sh - pt)[:, None] + (arg // kw) * dh
        cols = (xp.arange(window.output_size[1]) * sw - pl) + (arg % kw) * dw
        ctx.window, ctx.buf_shape = window, buf.shape
        ctx.save_for_backward(arg)
        ctx.mark_non_differentiable(1)
        return best, rows * w + cols

    @staticmethod
    def backward(ctx: Context, grad: Any, _: Any = None) -> tuple[Any, ...]:
        xp = xp_of(grad)
        (arg,) = ctx.saved_tensors
        window = ctx.window
        gbuf = xp.zeros(ctx.buf_shape, dtype=grad.dtype)
        for k in range(window.kernel[0] * window.kernel[1]):
            _tap(gbuf, k, window)[...] += xp.where(arg == k, grad, 0)
        return _unpadded(gbuf, window), None, None, None, None, None


def _unbatched(fn: Any, x: Tensor, *args: Any, **kwargs: Any) -> Any:
    """Run a 4-D pool on a 3-D (C, H, W) input and drop the batch axis again."""
    result = fn(x.reshape(1, *x.shape), *args, **kwargs)
    if isinstance(result, tuple):
        return tuple(r.reshape(*r.shape[1:]) for r in result)
    return result.reshape(*result.shape[1:])


def max_pool2d(
    x: Tensor,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Max over each (dilated) window, as ``torch.nn.functional.max_pool2d``.

    ``(N, C, H, W) -> (N, C, oH, oW)`` (3-D inputs are unbatched); ``stride`` defaults to
    ``kernel_size``; padding counts as -inf and must be at most half the kernel. NaN propagates.
    Ties: the gradient goes to the *first* maximum of each window in row-major (h, then w) order
    (PyTorch's convention), never split. With ``return_indices`` also returns int64 indices
    (N, C, oH, oW): each maximum's flat position ``h * W + w`` in its input plane.
    """
    x = as_tensor(x)
    if x.ndim == 3:
        return _unbatched(max_pool2d, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    values, indices = MaxPool2dFunction.apply(x, kernel_size, stride, padding, dilation, ceil_mode)
    return (values, indices) if return_indices else values


class AvgPool2dFunction(Function):
    """Mean over each window, divided as PyTorch divides (see :func:`avg_pool2d`).

    ``AvgPool2dFunction.apply(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
    divisor_override)`` on a 4-D input, all positional, as :func:`avg_pool2d`'s arguments.
    """

    @staticmethod
    def forward(
        ctx: Context,
        x: Any,
        kernel_size: Any,
        stride: Any,
        padding: Any,
        ceil_mode: bool,
        count_include_pad: bool,
        divisor_override: int | None,
    ) -> Any:
        window = _pool_window("avg_pool2d", x, kernel_size, stride, padding, 1, ceil_mode)
        xp = xp_of(x)
        divisor = xp.asarray(_avg_divisor(window, count_include_pad, divisor_override), dtype=x.dtype)
        buf = _padded(x, window, 0.0)
        total = _tap(buf, 0, window).copy()
        for k in range(1, window.kernel[0] * window.kernel[1]):
            total += _tap(buf, k, window)
        ctx.window, ctx.buf_shape = window, buf.shape
        ctx.save_for_backward(divisor)
        total /= divisor
        return total

    @staticmethod
    def backward(ctx: Context, grad: Any) -> tuple[Any, ...]:
        xp = xp_of(grad)
        (divisor,) = ctx.saved_tensors
        window = ctx.window
        share = grad / divisor
        gbuf = xp.zeros(ctx.buf_shape, dtype=grad.dtype)
        for k in range(window.kernel[0] * window.kernel[1]):
            _tap(gbuf, k, window)[...] += share
        return _unpadded(gbuf, window), None, None, None, None, None, None


def _avg_divisor(window: Window2d, count_include_pad: bool, divisor_override: Any) -> Any:
    """PyTorch's divisor: ``divisor_override`` if given, else per output pixel (oH, oW) the window
    clipped to the padded input (count_include_pad) or to the input itself; a ceil-mode window's part
    beyond the padding never counts."""
    if divisor_override is not None:
        if isinstance(divisor_override, bool) or int(divisor_override) != divisor_override or divisor_override == 0:
            raise ValueError(f"avg_pool2d: divisor_override must be a nonzero int, got {divisor_override!r}")
        return float(divisor_override)
    per_dim = []
    for d in range(2):
        size, kernel, stride, pad = window.input_size[d], window.kernel[d], window.stride[d], window.pad_before[d]
        counts = []
        for o in range(window.output_size[d]):
            start = o * stride - pad
            end = min(start + kernel, size + pad)
            if not count_include_pad:
                start, end = max(start, 0), min(end, size)
            counts.append(end - start)
        per_dim.append(counts)
    return [[float(a * b) for b in per_dim[1]] for a in per_dim[0]]


def avg_pool2d(
    x: Tensor,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    """Mean over each window, as ``torch.nn.functional.avg_pool2d``: ``(N, C, H, W) -> (N, C, oH, oW)``.

    Divisor (PyTorch's rule): ``divisor_override`` if given; else the window's size clipped to the
    padded input when ``count_include_pad`` (a ceil-mode window hanging past the padding is
    clipped), else the number of real input pixels in the window. Padding counts as zeros.
    """
    x = as_tensor(x)
    if x.ndim == 3:
        return _unbatched(avg_pool2d, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    return AvgPool2dFunction.apply(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def _adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive bins: [floor(i*size/out), ceil((i+1)*size/out)) for i < out."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def _adaptive_output(name: str, x: Any, output_size: Any) -> tuple[int, int]:
    """The checked (oH, oW) of an adaptive pool over raw x (N, C, H, W); ``None`` keeps that input size."""
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D input (N, C, H, W) or 3-D (C, H, W), got shape {tuple(x.shape)}")
    check_float(name, x)
    sizes = (output_size, output_size) if output_size is None or isinstance(output_size, int) else tuple(output_size)
    if len(sizes) != 2:
        raise ValueError(f"{name}: output_size must be an int, None or a pair, got {output_size!r}")
    out = tuple(x.shape[2 + d] if s is None else int(s) for d, s in enumerate(sizes))
    if min(out) < 1:
        raise ValueError(f"{name}: output_size must be positive, got {output_size!r}")
    if min(x.shape[2:]) < 1:
        raise ValueError(f"{name}: input spatial size must be positive, got shape {tuple(x.shape)}")
    return out  # type: ignore[return-value]


def _averaging_matrix(xp: Any, size: int, out: int, dtype: Any) -> Any:
    """(out, size) matrix whose row i averages bin i (PyTorch's adaptive bins)."""
    m = xp.zeros((out, size), dtype=dtype)
    for i, (start, end) in enumerate(_adaptive_bins(size, out)):
        m[i, start:end] = 1.0 / (end - start)
    return m


class AdaptiveAvgPool2dFunction(Function):
    """out = A_h @ x @ A_w.T with per-axis averaging matrices (bins may overlap or differ in size)."""

    @staticmethod
    def forward(ctx: Context, x: Any, output_size: Any) -> Any:
        out = _adaptive_output("adaptive_avg_pool2d", x, output_size)
        xp = xp_of(x)
        h, w = x.shape[2:]
        ctx.geometry = (h, w, out)
        if out == (1, 1):  # global average pool
            return x.mean(axis=(2, 3), keepdims=True)
        if h % out[0] == 0 and w % out[1] == 0:  # equal bins: a reshape
            n, c = x.shape[:2]
            return x.reshape(n, c, out[0], h // out[0], out[1], w // out[1]).mean(axis=(3, 5))
        ah, aw = _averaging_matrix(xp, h, out[0], x.dtype), _averaging_matrix(xp, w, out[1], x.dtype)
        ctx.save_for_backward(ah, aw)
        return xp.matmul(xp.matmul(ah, x), aw.T)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> tuple[Any, None]:
        xp = xp_of(grad)
        h, w, out = ctx.geometry
        n, c = grad.shape[:2]
        if out == (1, 1):
            return xp.broadcast_to(grad / (h * w), (n, c, h, w)), None
        if h % out[0] == 0 and w % out[1] == 0:
            kh, kw = h // out[0], w // out[1]
            share = (grad / (kh * kw))[:, :, :, None, :, None]
            return xp.broadcast_to(share, (n, c, out[0], kh, out[1], kw)).reshape(n, c, h, w), None
        ah, aw = ctx.saved_tensors
        return xp.matmul(xp.matmul(ah.T, grad), aw), None


def adaptive_avg_pool2d(x: Tensor, output_size: int | None | tuple[int | None, int | None]) -> Tensor:
    """Average over PyTorch's adaptive bins: ``(N, C, H, W) -> (N, C, oH, oW)``, any output size.

    Bin i along H covers rows ``floor(i*H/oH) .. ceil((i+1)*H/oH) - 1`` (likewise W); bins may
    overlap when oH does not divide H. ``None`` keeps that input size. Output 1 (global average
    pool) and sizes that divide the input are fast paths.
    """
    x = as_tensor(x)
    if x.ndim == 3:
        return _unbatched(adaptive_avg_pool2d, x, output_size)
    return AdaptiveAvgPool2dFunction.apply(x, output_size)


class AdaptiveMaxPool2dFunction(Function):
    """Max over adaptive bins, gathered into a (…, oH, Lh, oW, Lw) block padded by repeating edges."""

    @staticmethod
    def forward(ctx: Context, x: Any, output_size: Any) -> Any:
        out = _adaptive_output("adaptive_max_pool2d", x, output_size)
        xp = xp_of(x)
        n, c, h, w = x.shape
        index = []
        for size, o in ((h, out[0]), (w, out[1])):
            bins = _adaptive_bins(size, o)
            length = max(end - start for start, end in bins)
            # repeat a bin's last element to fill it up: it is never a *first* maximum twice
            index.append(xp.asarray([[min(start + t, end - 1) for t in range(length)] for start, end in bins], dtype=xp.int64))
        ih, iw = index
        lh, lw = ih.shape[1], iw.shape[1]
        block = x[:, :, ih[:, :, None, None], iw[None, None, :, :]]  # (N, C, oH, Lh, oW, Lw)
        flat = block.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, out[0], out[1], lh * lw)
        pick = xp.argmax(flat, axis=-1)  # first maximum in row-major bin order
        nan = xp.isnan(flat)
        if nan.any():  # NaN propagates, as in PyTorch
            pick = xp.where(nan.any(axis=-1), xp.argmax(nan, axis=-1), pick)
        values = xp.take_along_axis(flat, pick[..., None], axis=-1)[..., 0]
        rows = ih[xp.arange(out[0])[:, None], pick // lw]  # (oH, 1) with (N, C, oH, oW)
        cols = iw[xp.arange(out[1]), pick % lw]
        indices = rows * w + cols
        ctx.geometry = x.shape
        ctx.save_for_backward(indices)
        ctx.mark_non_differentiable(1)
        return values, indices

    @staticmethod
    def backward(ctx: Context, grad: Any, _: Any = None) -> tuple[Any, None]:
        xp = xp_of(grad)
        (indices,) = ctx.saved_tensors
        n, c, h, w = ctx.geometry
        gx = xp.zeros((n * c, h * w), dtype=grad.dtype)
        planes = xp.arange(n * c)[:, None]
        add_at(gx, (planes, indices.reshape(n * c, -1)), grad.reshape(n * c, -1))  # bins may overlap
        return gx.reshape(n, c, h, w), None


def adaptive_max_pool2d(
    x: Tensor, output_size: int | None | tuple[int | None, int | None], return_indices: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Max over PyTorch's adaptive bins (see :func:`adaptive_avg_pool2d`): ``(N, C, H, W) -> (N, C, oH, oW)``.

    Ties go to the first maximum of each bin in row-major order; ``return_indices`` also returns
    the flat ``h * W + w`` positions, as :func:`max_pool2d` does.
    """
    x = as_tensor(x)
    if x.ndim == 3:
        return _unbatched(adaptive_max_pool2d, x, output_size, return_indices)
    values, indices = AdaptiveMaxPool2dFunction.apply(x, output_size)
    return (values, indices) if return_indices else values


__all__ = ["adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "max_pool2d"]
