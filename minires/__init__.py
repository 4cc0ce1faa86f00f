"""minires: a small reverse-mode autograd engine on NumPy (CPU) and CuPy (GPU) arrays, with the
kernels, layers and models to train residual networks and to see how gradients flow through them."""

from __future__ import annotations

import numpy as _np

import minires.autograd.functional  # noqa: F401 - makes mr.autograd.functional reachable as an attribute
from minires import autograd, backends, cuda
from minires.autograd.function import Context, Function
from minires.autograd.grad_mode import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled
from minires.creation import (
    arange,
    as_tensor,
    eye,
    full,
    full_like,
    linspace,
    ones,
    ones_like,
    rand,
    randint,
    randn,
    randperm,
    tensor,
    zeros,
    zeros_like,
)
from minires.gradcheck import GradcheckError, gradcheck
from minires.gradgradcheck import gradgradcheck
from minires.ops import (
    abs,
    amax,
    amin,
    argmax,
    argmin,
    cat,
    clamp,
    clip,
    clone,
    exp,
    expand,
    flatten,
    flip,
    gather,
    isfinite,
    isnan,
    log,
    log_softmax,
    matmul,
    max,
    maximum,
    mean,
    min,
    minimum,
    pad,
    permute,
    pow,
    relu,
    reshape,
    scatter_add,
    sigmoid,
    softmax,
    sqrt,
    squeeze,
    stack,
    std,
    sum,
    tanh,
    transpose,
    unsqueeze,
    var,
    where,
)
from minires.random import get_rng_state, manual_seed, set_rng_state
from minires.serialization import load, load_tree, save, save_tree
from minires.tensor import Tensor
from minires.torchfile import load_torch, unwrap_state_dict

float16 = _np.dtype(_np.float16)
float32 = _np.dtype(_np.float32)
float64 = _np.dtype(_np.float64)
int32 = _np.dtype(_np.int32)
int64 = _np.dtype(_np.int64)
bool_ = _np.dtype(_np.bool_)
half, float, double, long = float16, float32, float64, int64  # noqa: A001 - PyTorch's aliases

__version__ = "0.1.0"

__all__ = [
    "abs", "amax", "amin", "arange", "argmax", "argmin", "as_tensor", "autograd", "backends", "bool_", "cat",
    "clamp", "clip", "clone", "Context", "cuda", "double", "enable_grad", "exp", "expand", "eye",
    "flatten", "flip", "float", "float16", "float32", "float64", "full", "full_like", "Function",
    "gather", "get_rng_state", "gradcheck", "GradcheckError", "gradgradcheck", "half", "inference_mode", "int32",
    "int64", "is_grad_enabled", "isfinite", "isnan", "linspace", "load", "load_torch", "load_tree",
    "log", "log_softmax", "long", "manual_seed", "matmul", "max", "maximum", "mean", "min", "minimum",
    "no_grad", "ones", "ones_like", "pad", "permute", "pow", "rand", "randint", "randn", "randperm",
    "relu", "reshape", "save", "save_tree", "scatter_add", "set_grad_enabled", "set_rng_state",
    "sigmoid", "softmax", "sqrt", "squeeze", "stack", "std", "sum", "tanh", "Tensor", "tensor",
    "transpose", "unsqueeze", "unwrap_state_dict", "var", "where", "zeros", "zeros_like",
]
