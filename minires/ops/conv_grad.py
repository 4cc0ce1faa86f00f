"""A convolution's two gradients as ops of their own, so ``create_graph=True`` can differentiate them.

For ``y = conv(x, w)`` (fixed stride, padding, dilation, groups) the backward computes

    dx = conv_input_grad(dy, w)     a transposed convolution ("deconvolution") of dy by w
    dw = conv_weight_grad(x, dy)    the correlation of x with dy, summed over pixels

Both are bilinear, and their derivatives are convolutions again (Chainer's
``Deconvolution2DFunction`` and ``Convolution2DGradW``)::

    conv_input_grad(dy, w):  d/d dy <- conv(ggx, w)          d/dw <- conv_weight_grad(ggx, dy)
    conv_weight_grad(x, dy): d/dx  <- conv_input_grad(dy, ggw)  d/d dy <- conv(x, ggw)

so the three ops (with :class:`minires.ops.conv.Conv2d`) are closed under differentiation:
gradients of any order go through im2col GEMMs. Their raw kernels are conv.py's own.
"""

from __future__ import annotations

from typing import Any

from minires.autograd.function import Context, Function
from minires.ops.conv import (
    Conv2d,
    Geometry,
    conv_from_columns,
    grad_matrix,
    group_columns,
    input_grad_from,
    weight_grad_from,
    weight_matrix,
)
from minires.tensor import Tensor


def _conv_raw(x: Any, weight: Any, out_shape: tuple[int, ...], geometry: Geometry, groups: int) -> Any:
    return conv_from_columns(group_columns(x, geometry[0], geometry, groups), weight_matrix(weight), out_shape)


def _out_shape(x_shape: tuple[int, ...], g: Any, weight_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    return (x_shape[0], weight_shape[0], g.shape[2], g.shape[3])


class Conv2dInputGradFunction(Function):
    """dx (N, C, H, W) from the output gradient dy (N, O, oH, oW) and the weight: a transposed convolution."""

    @staticmethod
    def forward(ctx: Context, g: Any, weight: Any, x_shape: tuple[int, ...], geometry: Geometry, groups: int) -> Any:
        ctx.meta = (x_shape, geometry, groups, g.shape)
        ctx.save_for_backward(g, weight)
        return input_grad_from(grad_matrix(g), weight_matrix(weight), x_shape, geometry, groups)

    @staticmethod
    def backward(ctx: Context, ggx: Any) -> tuple[Any, ...]:
        g, weight = ctx.saved_tensors
        _, geometry, groups, g_shape = ctx.meta
        dg = dw = None
        if ctx.needs_input_grad[0]:
            dg = _conv_raw(ggx, weight, g_shape, geometry, groups)
        if ctx.needs_input_grad[1]:
            dw = weight_grad_from(group_columns(ggx, geometry[0], geometry, groups), grad_matrix(g), weight.shape)
        return dg, dw, None, None, None

    @staticmethod
    def backward_graph(ctx: Context, ggx: Tensor) -> tuple[Any, ...]:
        g, weight = ctx.saved_tensors
        _, geometry, groups, _ = ctx.meta
        kernel, stride, pads, dilation = geometry
        dg = dw = None
        if ctx.needs_input_grad[0]:
            dg = Conv2d.apply(ggx, weight, None, stride, pads, dilation, groups)
        if ctx.needs_input_grad[1]:
            dw = Conv2dWeightGradFunction.apply(ggx, g, tuple(weight.shape), geometry, groups)
        return dg, dw, None, None, None


class Conv2dWeightGradFunction(Function):
    """dw (O, C/g, kH, kW) from the input x and the output gradient dy: x correlated with dy."""

    @staticmethod
    def forward(ctx: Context, x: Any, g: Any, weight_shape: tuple[int, ...], geometry: Geometry, groups: int) -> Any:
        ctx.meta = (weight_shape, geometry, groups)
        ctx.save_for_backward(x, g)
        return weight_grad_from(group_columns(x, geometry[0], geometry, groups), grad_matrix(g), weight_shape)

    @staticmethod
    def backward(ctx: Context, ggw: Any) -> tuple[Any, ...]:
        x, g = ctx.saved_tensors
        _, geometry, groups = ctx.meta
        dx = dg = None
        if ctx.needs_input_grad[0]:
            dx = input_grad_from(grad_matrix(g), weight_matrix(ggw), x.shape, geometry, groups)
        if ctx.needs_input_grad[1]:
            dg = _conv_raw(x, ggw, _out_shape(x.shape, g, ggw.shape), geometry, groups)
        return dx, dg, None, None, None

    @staticmethod
    def backward_graph(ctx: Context, ggw: Tensor) -> tuple[Any, ...]:
        x, g = ctx.saved_tensors
        _, geometry, groups = ctx.meta
        kernel, stride, pads, dilation = geometry
        dx = dg = None
        if ctx.needs_input_grad[0]:
            dx = Conv2dInputGradFunction.apply(g, ggw, tuple(x.shape), geometry, groups)
        if ctx.needs_input_grad[1]:
            dg = Conv2d.apply(x, ggw, None, stride, pads, dilation, groups)
        return dx, dg, None, None, None
