"""Fully connected layer: y = x @ weight.T + bias as one Function (one GEMM forward, GEMMs backward)."""

from __future__ import annotations

from typing import Any

from minires.amp import cast_to_compute
from minires.autograd.function import Context, Function
from minires.backend import xp_of
from minires.ops._util import as_tensor, check_float
from minires.tensor import Tensor


class LinearFunction(Function):
    """x (..., in) @ weight (out, in).T + bias (out,) -> (..., out).

    Leading dims of x are flattened to one row axis M so each product is a single 2-D GEMM; the
    transposes are views (BLAS reads them as transposed operands, no copy)::

        dx = g @ weight          (M, out) @ (out, in)
        dweight = g.T @ x        (out, M) @ (M, in)
        dbias = g.sum(0)
    """

    @staticmethod
    def forward(ctx: Context, x: Any, weight: Any, bias: Any) -> Any:
        xp = xp_of(x, weight)
        x2 = x.reshape(-1, x.shape[-1])
        out = xp.matmul(x2, weight.T)
        if bias is not None:
            out += bias
        ctx.save_for_backward(x2, weight)
        ctx.x_shape = x.shape
        return out.reshape(x.shape[:-1] + (weight.shape[0],))

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any, Any]:
        x2, weight = ctx.saved_tensors
        xp = xp_of(g)
        g2 = g.reshape(-1, weight.shape[0])
        need_x, need_w, need_b = ctx.needs_input_grad
        dx = xp.matmul(g2, weight).reshape(ctx.x_shape) if need_x else None
        dw = xp.matmul(g2.T, x2) if need_w else None
        db = g2.sum(axis=0) if need_b else None
        return dx, dw, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Affine map of the last axis: x (..., in), weight (out, in), bias (out,) -> (..., out)."""
    x = as_tensor(x)
    weight = as_tensor(weight)
    x, weight, bias = cast_to_compute(x, weight, None if bias is None else as_tensor(bias))  # float16 under autocast
    check_float("linear", x)
    check_float("linear", weight)
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got shape {weight.shape}")
    if x.ndim < 1:
        raise ValueError(f"linear: input must have at least 1 dim (..., in_features), got shape {x.shape}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: input has {x.shape[-1]} features (shape {x.shape}), weight expects {weight.shape[1]} "
            f"(weight shape {weight.shape})"
        )
    if x.dtype != weight.dtype:  # numpy would silently compute (and return) the wider dtype
        raise TypeError(
            f"linear: input dtype {x.dtype} and weight dtype {weight.dtype} differ; convert one (e.g. x.to(dtype=weight.dtype))"
        )
    if bias is not None:
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"linear: bias has shape {bias.shape}, expected ({weight.shape[0]},) for weight shape {weight.shape}")
        if bias.dtype != x.dtype:
            raise TypeError(f"linear: bias dtype {bias.dtype} differs from input dtype {x.dtype}")
    return LinearFunction.apply(x, weight, bias)
