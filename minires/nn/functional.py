"""``minires.nn.functional`` (``F``): the stateless ops layers call, under PyTorch's names.

A thin re-export of the kernels in :mod:`minires.ops`. The only code here adapts signatures:
``inplace=`` is accepted for compatibility with PyTorch code and ignored (minires never mutates a
tensor that autograd may still need; the result is always a new tensor).
"""

from __future__ import annotations

from minires.ops.activations import leaky_relu as _leaky_relu
from minires.ops.activations import log_softmax, sigmoid, softmax, tanh
from minires.ops.activations import relu as _relu
from minires.ops.conv import conv2d
from minires.ops.dropout import dropout as _dropout
from minires.ops.indexing import one_hot
from minires.ops.layer_norm import group_norm, layer_norm
from minires.ops.linear import linear
from minires.ops.losses import cross_entropy, mse_loss, nll_loss
from minires.ops.normalization import batch_norm, batch_norm_add_relu, batch_norm_relu
from minires.ops.pooling import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d
from minires.ops.shape import flatten, pad
from minires.tensor import Tensor


def relu(input: Tensor, inplace: bool = False) -> Tensor:  # noqa: A002 - PyTorch's argument name
    """max(x, 0). ``inplace`` is accepted for PyTorch compatibility; the result is always a new tensor."""
    return _relu(input)


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:  # noqa: A002
    """x if x > 0 else negative_slope * x. ``inplace`` is accepted and ignored (always a new tensor)."""
    return _leaky_relu(input, negative_slope)


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:  # noqa: A002
    """Inverted dropout (identity unless ``training``). ``inplace`` is accepted and ignored."""
    return _dropout(input, p, training)


__all__ = [
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "batch_norm", "batch_norm_add_relu", "batch_norm_relu",
    "conv2d", "cross_entropy", "dropout", "flatten", "group_norm", "layer_norm", "leaky_relu", "linear",
    "log_softmax", "max_pool2d", "mse_loss", "nll_loss", "one_hot", "pad", "relu", "sigmoid", "softmax",
    "tanh",
]
