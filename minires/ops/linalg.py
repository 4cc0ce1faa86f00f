"""Matrix product with numpy's rules: 1-D operands, batched stacks, broadcasting of batch dims."""

from __future__ import annotations

from typing import Any

import numpy as np

from minires.autograd.function import Context, Function
from minires.backend import xp_of
from minires.ops._util import as_tensor, sum_to_shape
from minires.tensor import Tensor


class MatMul(Function):
    """a @ b. Backward: dA = dC @ B^T, dB = A^T @ dC, then summed over broadcast batch dims.

    The backward uses only ``@``, indexing, reshape and sums, so it runs on Tensors as well."""

    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        ctx.save_for_backward(a, b)
        return xp_of(a, b).matmul(a, b)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any]:
        a, b = ctx.saved_tensors
        a2 = a[None, :] if a.ndim == 1 else a  # a vector on the left is a row
        b2 = b[:, None] if b.ndim == 1 else b  # a vector on the right is a column
        batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        g2 = g.reshape(batch + (a2.shape[-2], b2.shape[-1]))
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = sum_to_shape(g2 @ _swap_last(b2), a2.shape).reshape(a.shape)
        if ctx.needs_input_grad[1]:
            gb = sum_to_shape(_swap_last(a2) @ g2, b2.shape).reshape(b.shape)
        return ga, gb


def _swap_last(m: Any) -> Any:
    """The last two axes swapped (a view), for an array or a Tensor."""
    return m.transpose(-1, -2) if isinstance(m, Tensor) else m.swapaxes(-1, -2)


def matmul(a: Any, b: Any) -> Tensor:
    a = as_tensor(a)
    b = as_tensor(b, like=a)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: both operands need at least 1 dim, got shapes {a.shape} and {b.shape}")
    k_a = a.shape[-1]
    k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if k_a != k_b:
        raise ValueError(
            f"matmul: inner dims differ: {a.shape} @ {b.shape} ({k_a} != {k_b}); expected (..., n, k) @ (..., k, m)"
        )
    return MatMul.apply(a, b)
