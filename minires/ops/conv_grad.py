"""A convolution's two gradients as ops of their own, so ``create_graph=True`` can differentiate them.

For ``y = conv(x, w)`` (fixed stride, padding, dilation, groups) the backward computes

    dx = conv_input_grad(dy, w)     a transposed convolution ("deconvolution") of dy by w
    dw = conv_weight_grad(x, dy)    the correlation of x with dy, summed over pixels

Both are bilinear, and their derivatives are convolutions again (Chainer's
``Deconvolution2DFunction`` and ``Convolution2DGradW``)::

    conv_input_grad(dy, w):   d/d(dy) <- conv(ggx, w)             d/dw    <- conv_weight_grad(ggx, dy)
    conv_weight_grad(x, dy):  d/dx    <- conv_input_grad(dy, ggw)  d/d(dy) <- conv(x, ggw)

so the three ops (with :class:`minires.ops.conv.Conv2dFunction`) are closed under differentiation:
gradients of any order run on im2col GEMMs. Their raw kernels are conv.py's own helpers.
``window`` is the forward's checked :class:`~minires.ops.geometry.Window2d` and ``arguments`` its
(stride, padding, dilation, groups) as given to ``Conv2dFunction.apply``.
"""

from __future__ import annotations

from typing import Any

from minires.autograd.function import Context, Function
from minires.ops.conv import (
    Conv2dFunction,
    conv_from_columns,
    grad_matrix,
    group_columns,
    input_grad_from,
    weight_grad_from,
    weight_matrix,
)
from minires.ops.geometry import Window2d
from minires.tensor import Tensor

ConvArguments = tuple[Any, Any, Any, int]  # stride, padding, dilation, groups


def _conv(x: Any, weight: Any, window: Window2d, groups: int) -> Any:
    """The forward convolution (no bias) on raw arrays over an already checked window."""
    return conv_from_columns(group_columns(x, window, groups), weight_matrix(weight), x.shape[0], window)


class Conv2dInputGradFunction(Function):
    """dx (N, C, H, W) from the output gradient dy (N, O, oH, oW) and the weight: a transposed convolution."""

    @staticmethod
    def forward(ctx: Context, g: Any, weight: Any, x_shape: tuple[int, ...], window: Window2d, arguments: ConvArguments) -> Any:
        ctx.window, ctx.arguments = window, arguments
        ctx.save_for_backward(g, weight)
        return input_grad_from(grad_matrix(g), weight_matrix(weight), x_shape, window, arguments[3])

    @staticmethod
    def backward(ctx: Context, ggx: Any) -> tuple[Any, ...]:
        g, weight = ctx.saved_tensors
        window, groups = ctx.window, ctx.arguments[3]
        dg = dw = None
        if ctx.needs_input_grad[0]:
            dg = _conv(ggx, weight, window, groups)
        if ctx.needs_input_grad[1]:
            dw = weight_grad_from(group_columns(ggx, window, groups), grad_matrix(g), weight.shape)
        return dg, dw, None, None, None

    @staticmethod
    def backward_graph(ctx: Context, ggx: Tensor) -> tuple[Any, ...]:
        g, weight = ctx.saved_tensors
        dg = dw = None
        if ctx.needs_input_grad[0]:
            dg = Conv2dFunction.apply(ggx, weight, None, *ctx.arguments)
        if ctx.needs_input_grad[1]:
            dw = Conv2dWeightGradFunction.apply(ggx, g, tuple(weight.shape), ctx.window, ctx.arguments)
        return dg, dw, None, None, None


class Conv2dWeightGradFunction(Function):
    """dw (O, C/g, kH, kW) from the input x and the output gradient dy: x correlated with dy."""

    @staticmethod
    def forward(ctx: Context, x: Any, g: Any, weight_shape: tuple[int, ...], window: Window2d, arguments: ConvArguments) -> Any:
        ctx.window, ctx.arguments = window, arguments
        ctx.save_for_backward(x, g)
        return weight_grad_from(group_columns(x, window, arguments[3]), grad_matrix(g), weight_shape)

    @staticmethod
    def backward(ctx: Context, ggw: Any) -> tuple[Any, ...]:
        x, g = ctx.saved_tensors
        window, groups = ctx.window, ctx.arguments[3]
        dx = dg = None
        if ctx.needs_input_grad[0]:
            dx = input_grad_from(grad_matrix(g), weight_matrix(ggw), x.shape, window, groups)
        if ctx.needs_input_grad[1]:
            dg = _conv(x, ggw, window, groups)
        return dx, dg, None, None, None

    @staticmethod
    def backward_graph(ctx: Context, ggw: Tensor) -> tuple[Any, ...]:
        x, g = ctx.saved_tensors
        dx = dg = None
        if ctx.needs_input_grad[0]:
            dx = Conv2dInputGradFunction.apply(g, ggw, tuple(x.shape), ctx.window, ctx.arguments)
        if ctx.needs_input_grad[1]:
            dg = Conv2dFunction.apply(x, ggw, None, *ctx.arguments)
        return dx, dg, None, None, None
