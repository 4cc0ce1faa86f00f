"""Memory layouts of (N, C, *spatial) arrays: plain NCHW, or channels-last (N, *spatial, C) memory.

The shape is always (N, C, *spatial) -- PyTorch's convention -- but the memory underneath may be
channels-last: conv2d returns views whose memory is (N, H, W, C) contiguous (strides (HWC, 1, WC, C)).
Elementwise and per-channel kernels (BatchNorm on the CPU and on the GPU) read such arrays as they lie
instead of copying them into NCHW; these helpers name and build the two layouts.
"""

from __future__ import annotations

from typing import Any

from minires.backend import xp_of


def to_last(ndim: int) -> tuple[int, ...]:
    """Axes that turn (N, C, *spatial) into (N, *spatial, C): ``a.transpose(to_last(a.ndim))``."""
    return (0,) + tuple(range(2, ndim)) + (1,)


def from_last(ndim: int) -> tuple[int, ...]:
    """Axes that turn (N, *spatial, C) back into (N, C, *spatial) (the inverse of :func:`to_last`)."""
    return (0, ndim - 1) + tuple(range(1, ndim - 1))


def channels_last_dense(a: Any) -> bool:
    """True when the (N, C, *spatial) array's memory is (N, *spatial, C) contiguous.

    Also true for arrays that are NCHW-contiguous at the same time (N == 1 with one pixel, or (N, C)
    2-D arrays, whose memory is (N, C) either way); :func:`is_channels_last` excludes those."""
    return a.transpose(to_last(a.ndim)).flags.c_contiguous


def is_channels_last(a: Any) -> bool:
    """True when an (N, C, *spatial) array's memory is (N, *spatial, C) contiguous (and not NCHW too)."""
    return a.ndim > 2 and not a.flags.c_contiguous and channels_last_dense(a)


def in_layout(a: Any, channels_last: bool) -> Any:
    """``a`` (a view when it already is so) with contiguous NCHW memory, or channels-last memory."""
    xp = xp_of(a)
    if not channels_last:
        return xp.ascontiguousarray(a)
    return xp.ascontiguousarray(a.transpose(to_last(a.ndim))).transpose(from_last(a.ndim))


def empty_in_layout(xp: Any, shape: tuple[int, ...], dtype: Any, channels_last: bool) -> Any:
    """An uninitialised (N, C, *spatial) array with NCHW or channels-last memory."""
    if not channels_last:
        return xp.empty(shape, dtype=dtype)
    last = tuple(shape[i] for i in to_last(len(shape)))
    return xp.empty(last, dtype=dtype).transpose(from_last(len(shape)))


__all__ = ["channels_last_dense", "empty_in_layout", "from_last", "in_layout", "is_channels_last", "to_last"]
