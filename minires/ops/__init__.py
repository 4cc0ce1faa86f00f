"""The differentiable ops of the core, one module per family. Tensor methods call these."""

from minires.ops.activations import leaky_relu, log_softmax, relu, sigmoid, softmax, tanh
from minires.ops.elementwise import (
    abs,
    add,
    clamp,
    clip,
    div,
    eq,
    exp,
    ge,
    gt,
    le,
    log,
    lt,
    maximum,
    minimum,
    mul,
    ne,
    neg,
    pow,
    sqrt,
    sub,
    where,
)
from minires.ops.linalg import matmul
from minires.ops.reductions import amax, amin, argmax, argmin, max, mean, min, sum, var
from minires.ops.shape import (
    cat,
    expand,
    flatten,
    getitem,
    pad,
    permute,
    reshape,
    squeeze,
    stack,
    to_device_dtype,
    transpose,
    unsqueeze,
    view,
)

__all__ = [
    "abs", "add", "amax", "amin", "argmax", "argmin", "cat", "clamp", "clip", "div", "eq", "exp",
    "expand", "flatten", "ge", "getitem", "gt", "le", "leaky_relu", "log", "log_softmax", "lt",
    "matmul", "max", "maximum", "mean", "min", "minimum", "mul", "ne", "neg", "pad", "permute",
    "pow", "relu", "reshape", "sigmoid", "softmax", "sqrt", "squeeze", "stack", "sub", "sum",
    "tanh", "to_device_dtype", "transpose", "unsqueeze", "var", "view", "where",
]
