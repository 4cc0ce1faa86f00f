"""Reductions: sum, mean, var, amax/amin, max/min (with indices along a dim), argmax/argmin."""

from __future__ import annotations

import warnings
from collections import namedtuple
from typing import Any

import numpy as np

from minires.autograd.function import Context, Function
from minires.backend import xp_of
from minires.ops._util import as_tensor, check_float, normalize_axes, quiet
from minires.ops.along_dim import ScatterAddAlongDimFunction, scatter_add_along_dim
from minires.tensor import Tensor

MaxResult = namedtuple("MaxResult", ["values", "indices"])


def _expand_back(g: Any, shape: tuple[int, ...], axes: tuple[int, ...] | None, keepdim: bool) -> Any:
    """Broadcast a reduced gradient (an array, or a Tensor under create_graph) back to the input's shape."""
    if axes is None:
        axes = tuple(range(len(shape)))
    if not keepdim:
        g = g.reshape(tuple(1 if i in axes else n for i, n in enumerate(shape)))
    return g.expand(shape) if isinstance(g, Tensor) else xp_of(g).broadcast_to(g, shape)


def _count(shape: tuple[int, ...], axes: tuple[int, ...] | None) -> int:
    n = 1
    for i, s in enumerate(shape):
        if axes is None or i in axes:
            n *= s
    return n


class Sum(Function):
    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, x: Any, axes: tuple[int, ...] | None, keepdim: bool) -> Any:
        ctx.meta = (x.shape, axes, keepdim)
        return x.sum(axis=axes, keepdims=keepdim)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None, None]:
        shape, axes, keepdim = ctx.meta
        return _expand_back(g, shape, axes, keepdim), None, None


class Mean(Function):
    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, x: Any, axes: tuple[int, ...] | None, keepdim: bool) -> Any:
        ctx.meta = (x.shape, axes, keepdim)
        return x.mean(axis=axes, keepdims=keepdim)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None, None]:
        shape, axes, keepdim = ctx.meta
        return _expand_back(g / _count(shape, axes), shape, axes, keepdim), None, None


class Var(Function):
    """Variance with ``ddof`` (0: divide by n; 1: by n - 1). d var / dx = 2 (x - mean) / (n - ddof).

    Saves ``x`` itself (not the centred values) so the backward can run on Tensors too."""

    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, x: Any, axes: tuple[int, ...] | None, keepdim: bool, ddof: int) -> Any:
        n = _count(x.shape, axes)
        denom = n - ddof if n > ddof else 0  # (this module shadows max)
        if denom == 0:  # PyTorch: a warning, and 0 / 0 = nan (or inf)
            warnings.warn(
                f"var: degrees of freedom is <= 0 ({n} value(s) per reduction, correction {ddof}); the result is nan or inf",
                RuntimeWarning,
                stacklevel=4,
            )
        xp = xp_of(x)
        with quiet(xp):
            centred = x - x.mean(axis=axes, keepdims=True)
            ctx.save_for_backward(x)  # x itself, so a differentiable backward can put it back on the graph
            ctx.meta = (x.shape, axes, keepdim, denom)
            return ((centred * centred).sum(axis=axes, keepdims=keepdim) / x.dtype.type(denom)).astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None, None, None]:
        (x,) = ctx.saved_tensors
        shape, axes, keepdim, denom = ctx.meta
        centred = x - x.mean(axis=axes, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = 2 / g.dtype.type(denom)
        return _expand_back(g, shape, axes, keepdim) * centred * scale, None, None, None


class Extreme(Function):
    """amax / amin over axes; ties share the gradient evenly (PyTorch's amax convention)."""

    differentiable_backward = True  # the shares are constants: piecewise linear

    @staticmethod
    def forward(ctx: Context, x: Any, axes: tuple[int, ...] | None, keepdim: bool, largest: bool) -> Any:
        reduced = range(x.ndim) if axes is None else axes
        empty = [d for d in reduced if x.shape[d] == 0]
        if empty or (x.ndim == 0 and x.size == 0):
            raise ValueError(
                f"{'amax' if largest else 'amin'}: cannot reduce dim {empty[0] if empty else None} of size 0 "
                f"(input shape {tuple(x.shape)}); there is no largest or smallest value there"
            )
        kept = x.max(axis=axes, keepdims=True) if largest else x.min(axis=axes, keepdims=True)
        ctx.save_for_backward(x == kept)
        ctx.meta = (x.shape, axes, keepdim)
        if keepdim:
            return kept
        return kept.reshape(()) if axes is None else kept.squeeze(axis=axes)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None, None, None]:
        (hit,) = ctx.saved_tensors
        shape, axes, keepdim = ctx.meta
        share = hit.astype(g.dtype)  # in g's dtype: a bool / int division would give float64
        share /= share.sum(axis=axes, keepdims=True)
        return _expand_back(g, shape, axes, keepdim) * share, None, None, None


class ExtremeAlongDim(Function):
    """max / min along one dim returning (values, indices); the gradient goes to the index returned
    (the first extreme on ties, as numpy's argmax and PyTorch's max(dim))."""

    @staticmethod
    def forward(ctx: Context, x: Any, dim: int, keepdim: bool, largest: bool) -> tuple[Any, Any]:
        xp = xp_of(x)
        idx = (x.argmax if largest else x.argmin)(axis=dim)
        idx_k = xp.expand_dims(idx, dim)
        values = xp.take_along_axis(x, idx_k, axis=dim)
        ctx.save_for_backward(idx_k)
        ctx.meta = (x.shape, dim, keepdim)
        ctx.mark_non_differentiable(1)
        if keepdim:
            return values, idx_k
        return values.squeeze(axis=dim), idx

    @staticmethod
    def backward(ctx: Context, g: Any, _g_idx: Any) -> tuple[Any, None, None, None]:
        (idx_k,) = ctx.saved_tensors
        shape, dim, keepdim = ctx.meta
        if not keepdim:
            g = xp_of(g).expand_dims(g, dim)
        return scatter_add_along_dim(g, idx_k, dim, shape), None, None, None

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor, _g_idx: Any) -> tuple[Any, None, None, None]:
        (idx_k,) = ctx.saved_tensors
        shape, dim, keepdim = ctx.meta
        if not keepdim:
            g = g.unsqueeze(dim)
        return ScatterAddAlongDimFunction.apply(g, idx_k, dim, shape), None, None, None


def sum(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:  # noqa: A001
    x = as_tensor(x)
    return Sum.apply(x, normalize_axes("sum", dim, x.ndim), keepdim)


def mean(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    x = as_tensor(x)
    if x.dtype.kind not in "fc":
        raise TypeError(f"mean: expected a floating-point tensor, got dtype {x.dtype}; use .float() first")
    return Mean.apply(x, normalize_axes("mean", dim, x.ndim), keepdim)


def _correction(name: str, unbiased: bool | None, correction: Any) -> int:
    if unbiased is not None and correction is not None:
        raise TypeError(f"{name}: give unbiased or correction, not both")
    if correction is None:
        return 0 if unbiased is False else 1
    if isinstance(correction, bool) or not isinstance(correction, (int, np.integer)) or correction < 0:
        raise ValueError(f"{name}: correction must be a non-negative int, got {correction!r}")
    return int(correction)


def var(x: Tensor, dim: Any = None, keepdim: bool = False, unbiased: bool | None = None, *, correction: Any = None) -> Tensor:
    """Variance over ``dim``, dividing by n - correction (default 1, Bessel's; ``unbiased=False`` means 0)."""
    x = as_tensor(x)
    check_float("var", x)
    return Var.apply(x, normalize_axes("var", dim, x.ndim), keepdim, _correction("var", unbiased, correction))


def std(x: Tensor, dim: Any = None, keepdim: bool = False, unbiased: bool | None = None, *, correction: Any = None) -> Tensor:
    """Standard deviation: sqrt of :func:`var` (same arguments)."""
    return var(x, dim, keepdim, unbiased, correction=correction).sqrt()


def amax(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    x = as_tensor(x)
    return Extreme.apply(x, normalize_axes("amax", dim, x.ndim), keepdim, True)


def amin(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    x = as_tensor(x)
    return Extreme.apply(x, normalize_axes("amin", dim, x.ndim), keepdim, False)


def _extreme(name: str, x: Tensor, dim: Any, keepdim: bool, largest: bool) -> Any:
    x = as_tensor(x)
    if dim is None:
        return Extreme.apply(x, None, keepdim, largest)
    if not isinstance(dim, int):
        raise TypeError(f"{name}: dim must be an int (use amax/amin for several dims), got {dim!r}")
    normalize_axes(name, dim, x.ndim)  # raises on a dim out of range
    if x.ndim == 0:  # PyTorch allows dim 0 / -1 on a 0-d tensor: the value itself, index 0
        values, indices = ExtremeAlongDim.apply(x.reshape(1), 0, False, largest)
    else:
        values, indices = ExtremeAlongDim.apply(x, dim % x.ndim, keepdim, largest)
    return MaxResult(values, indices)


def max(x: Tensor, dim: Any = None, keepdim: bool = False) -> Any:  # noqa: A001
    """``max(x)``: the largest value; ``max(x, dim)``: (values, indices) along ``dim``."""
    return _extreme("max", x, dim, keepdim, True)


def min(x: Tensor, dim: Any = None, keepdim: bool = False) -> Any:  # noqa: A001
    """``min(x)``: the smallest value; ``min(x, dim)``: (values, indices) along ``dim``."""
    return _extreme("min", x, dim, keepdim, False)


def _arg_extreme(name: str, x: Tensor, dim: Any, keepdim: bool, largest: bool) -> Tensor:
    """Index of the first extreme along ``dim`` (of the flattened tensor when dim is None); int64."""
    x = as_tensor(x)
    if dim is not None and not isinstance(dim, (int, np.integer)):
        raise TypeError(f"{name}: dim must be an int or None, got {dim!r}")
    axes = normalize_axes(name, dim, x.ndim)
    find = x.data.argmax if largest else x.data.argmin
    if not axes:  # dim None, or a 0-d tensor
        return Tensor._from_array(find())
    return Tensor._from_array(find(axis=axes[0], keepdims=keepdim))


def argmax(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    return _arg_extreme("argmax", x, dim, keepdim, True)


def argmin(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    return _arg_extreme("argmin", x, dim, keepdim, False)
