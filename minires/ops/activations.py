"""Activation functions: relu, leaky_relu, sigmoid, tanh, softmax, log_softmax (numerically stable)."""

from __future__ import annotations

from typing import Any

import numpy as np

from minires.autograd.function import Context, Function
from minires.backend import xp_of
from minires.ops._util import as_tensor, check_float, normalize_axes, quiet
from minires.ops.batch_norm_cpu import row_length
from minires.tensor import Tensor


def relu_values(x: Any) -> Any:
    """``max(x, 0)`` as a new array in x's memory layout (NaN stays NaN; not ``x * (x > 0)``: -inf * 0 is NaN).

    NumPy runs ``maximum``'s vectorised loop only when both operands are arrays: against the scalar 0 it is
    about 2.5x slower than a copy. So a large dense NumPy array is viewed as rows of up to 16K values
    (in memory order) and compared with one row of zeros.
    """
    xp = xp_of(x)
    if xp is np and x.size >= _ROWS_FROM:
        out = np.empty_like(x)
        flat, flat_out = x.ravel(order="K"), out.ravel(order="K")
        length = row_length(x.size, 1)
        if out.strides == x.strides and np.may_share_memory(flat, x) and length >= 1024:  # ravel gave a view: dense
            np.maximum(flat.reshape(-1, length), np.zeros(length, x.dtype), out=flat_out.reshape(-1, length))
            return out
    return xp.maximum(x, x.dtype.type(0))


_ROWS_FROM = 1 << 14  # arrays smaller than this: the plain call (the rows would not pay for their setup)


class ReLUFunction(Function):
    """max(x, 0). Convention at the kink: the gradient at exactly x == 0 is 0 (as PyTorch).
    Its second derivative is 0 away from the kink: the backward ``g * mask`` is linear in g."""

    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        mask = x > 0
        ctx.save_for_backward(mask)
        return relu_values(x)

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (mask,) = ctx.saved_tensors
        return g * mask


class LeakyReLUFunction(Function):
    """x if x > 0 else slope * x; the gradient at exactly 0 is ``slope`` (as PyTorch)."""

    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, x: Any, slope: float) -> Any:
        mask = x > 0
        ctx.save_for_backward(mask)
        ctx.slope = slope
        return xp_of(x).where(mask, x, x * x.dtype.type(slope))

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None]:
        (mask,) = ctx.saved_tensors
        return g * xp_of(mask).where(mask, g.dtype.type(1), g.dtype.type(ctx.slope)), None


class SigmoidFunction(Function):
    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        xp = xp_of(x)
        # 1 / (1 + e^-x) overflows for very negative x in float32; this form never does.
        e = xp.exp(-xp.abs(x))
        out = xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (out,) = ctx.saved_tensors
        return g * out * (1 - out)


class TanhFunction(Function):
    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        out = xp_of(x).tanh(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (out,) = ctx.saved_tensors
        return g * (1 - out * out)


class SoftmaxFunction(Function):
    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, x: Any, dim: int) -> Any:
        xp = xp_of(x)
        with quiet(xp):  # a row of all -inf gives nan without a warning, as PyTorch
            e = xp.exp(x - x.max(axis=dim, keepdims=True))
            out = e / e.sum(axis=dim, keepdims=True)
        ctx.save_for_backward(out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None]:
        (out,) = ctx.saved_tensors
        return out * (g - (g * out).sum(axis=ctx.dim, keepdims=True)), None


class LogSoftmaxFunction(Function):
    """x - logsumexp(x), computed after subtracting the max so it never overflows."""

    @staticmethod
    def forward(ctx: Context, x: Any, dim: int) -> Any:
        xp = xp_of(x)
        with quiet(xp):  # a row of all -inf gives nan without a warning, as PyTorch
            shifted = x - x.max(axis=dim, keepdims=True)
            out = shifted - xp.log(xp.exp(shifted).sum(axis=dim, keepdims=True))
        ctx.save_for_backward(out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None]:
        (out,) = ctx.saved_tensors
        xp = xp_of(out)
        return g - xp.exp(out) * g.sum(axis=ctx.dim, keepdims=True), None

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor) -> tuple[Any, None]:
        (out,) = ctx.saved_tensors
        return g - out.exp() * g.sum(axis=ctx.dim, keepdims=True), None


def relu(x: Tensor) -> Tensor:
    x = as_tensor(x)
    check_float("relu", x)
    return ReLUFunction.apply(x)


def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    x = as_tensor(x)
    check_float("leaky_relu", x)
    return LeakyReLUFunction.apply(x, float(negative_slope))


def sigmoid(x: Tensor) -> Tensor:
    x = as_tensor(x)
    check_float("sigmoid", x)
    return SigmoidFunction.apply(x)


def tanh(x: Tensor) -> Tensor:
    x = as_tensor(x)
    check_float("tanh", x)
    return TanhFunction.apply(x)


def _one_dim(name: str, x: Tensor, dim: Any) -> int:
    if dim is None:
        raise TypeError(f"{name}: dim must be given (an int), as in {name}(x, dim=1)")
    axes = normalize_axes(name, dim, x.ndim)
    if axes is None or len(axes) > 1 or (x.ndim and not axes):
        raise TypeError(f"{name}: dim must be a single int, got {dim!r}")
    return axes[0] if axes else 0  # a 0-d tensor: numpy's max/sum accept axis 0 there


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    x = as_tensor(x)
    check_float("softmax", x)
    return SoftmaxFunction.apply(x, _one_dim("softmax", x, dim))


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    x = as_tensor(x)
    check_float("log_softmax", x)
    return LogSoftmaxFunction.apply(x, _one_dim("log_softmax", x, dim))
