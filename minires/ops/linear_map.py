"""``LinearMapFunction``: a fixed linear map given as two raw-array functions, differentiable to any order.

Many backwards are linear in the incoming gradient with everything else fixed: pooling's scatter
by the saved argmax, average pooling's spreading, a loss's constant coefficients. Written as
``LinearMapFunction.apply(g, apply, transpose)``, such a backward records a node whose own backward
is the transpose (max-pool's scatter <-> a gather by the same argmax) and whose double backward is
the map again — so ``create_graph=True`` through it needs nothing else.
"""

from __future__ import annotations

from typing import Any, Callable

from minires.autograd.function import Context, Function
from minires.tensor import Tensor

RawMap = Callable[[Any], Any]


class LinearMapFunction(Function):
    """y = A x for a linear ``apply`` (raw array -> raw array) whose adjoint is ``transpose``."""

    @staticmethod
    def forward(ctx: Context, x: Any, apply: RawMap, transpose: RawMap) -> Any:
        ctx.maps = (apply, transpose)
        return apply(x)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None, None]:
        return ctx.maps[1](g), None, None

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor) -> tuple[Any, None, None]:
        apply, transpose = ctx.maps
        return LinearMapFunction.apply(g, transpose, apply), None, None


def linear_map(x: Tensor, apply: RawMap, transpose: RawMap) -> Tensor:
    """``apply(x)`` as a differentiable op, given its adjoint ``transpose`` (both on raw arrays)."""
    return LinearMapFunction.apply(x, apply, transpose)
