"""Gather and scatter-add along one dim, a pair of linear ops that are each other's backward.

``take_along_dim(x, idx, dim)`` picks ``x[..., idx[...], ...]`` along ``dim`` (numpy's
``take_along_axis``); its backward scatter-adds the gradient back to where it was taken from.
Because each is the other's transpose, both are differentiable to any order. max(dim)'s and
max-pooling's backward are scatters by the saved argmax, so their double backward is a gather.
"""

from __future__ import annotations

from typing import Any

from minires import backend
from minires.autograd.function import Context, Function
from minires.backend import xp_of
from minires.tensor import Tensor


def along_dim_index(idx: Any, dim: int) -> tuple[Any, ...]:
    """The advanced index that selects ``idx`` along ``dim`` and every position along the other dims."""
    xp = xp_of(idx)
    parts = []
    for d, n in enumerate(idx.shape):
        if d == dim:
            parts.append(idx)
        else:
            shape = [1] * idx.ndim
            shape[d] = n
            parts.append(xp.arange(n).reshape(shape))
    return tuple(parts)


def scatter_add_along_dim(values: Any, idx: Any, dim: int, shape: tuple[int, ...]) -> Any:
    """Zeros of ``shape`` with ``values`` added at ``idx`` along ``dim`` (repeated indices accumulate)."""
    out = xp_of(values).zeros(shape, dtype=values.dtype)
    backend.add_at(out, along_dim_index(idx, dim), values)
    return out


class TakeAlongDimFunction(Function):
    """x (shape S) -> x taken at ``idx`` along ``dim`` (shape of idx); backward scatter-adds."""

    @staticmethod
    def forward(ctx: Context, x: Any, idx: Any, dim: int) -> Any:
        ctx.meta = (x.shape, idx, dim)
        return xp_of(x).take_along_axis(x, idx, axis=dim)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None, None]:
        shape, idx, dim = ctx.meta
        return scatter_add_along_dim(g, idx, dim, shape), None, None

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor) -> tuple[Any, None, None]:
        shape, idx, dim = ctx.meta
        return ScatterAddAlongDimFunction.apply(g, idx, dim, shape), None, None


class ScatterAddAlongDimFunction(Function):
    """values (shape of idx) -> zeros(shape) with values added at ``idx`` along ``dim``; backward gathers."""

    @staticmethod
    def forward(ctx: Context, values: Any, idx: Any, dim: int, shape: tuple[int, ...]) -> Any:
        ctx.meta = (idx, dim)
        return scatter_add_along_dim(values, idx, dim, shape)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None, None, None]:
        idx, dim = ctx.meta
        return xp_of(g).take_along_axis(g, idx, axis=dim), None, None, None

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor) -> tuple[Any, None, None, None]:
        idx, dim = ctx.meta
        return TakeAlongDimFunction.apply(g, idx, dim), None, None, None
