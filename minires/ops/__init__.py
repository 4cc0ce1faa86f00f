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
from minires.ops.indexing import gather, isfinite, isnan, one_hot, scatter_add
from minires.ops.linalg import matmul
from minires.ops.reductions import amax, amin, argmax, argmin, max, mean, min, std, sum, var
from minires.ops.shape import (
    cat,
    clone,
    expand,
    flatten,
    flip,
    getitem,
    index_put,
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
    "abs", "add", "amax", "amin", "argmax", "argmin", "cat", "clamp", "clip", "clone", "div", "eq",
    "exp", "expand", "flatten", "flip", "gather", "ge", "getitem", "gt", "index_put", "isfinite",
    "isnan", "le", "leaky_relu", "log", "log_softmax", "lt", "matmul", "max", "maximum", "mean", "min",
    "minimum", "mul", "ne", "neg", "one_hot", "pad", "permute", "pow", "relu", "reshape", "scatter_add",
    "sigmoid", "softmax", "sqrt", "squeeze", "stack", "std", "sub", "sum", "tanh", "to_device_dtype",
    "transpose", "unsqueeze", "var", "view", "where",
]
