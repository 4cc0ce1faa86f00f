"""Inverted dropout: zero each element with probability p, scale the survivors by 1 / (1 - p).

The mask is drawn from minires' global generator (:func:`minires.manual_seed`) on the host and moved
to the input's device, so a seed gives the same mask on the CPU and the GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minires import backend, random
from minires.autograd.function import Context, Function
from minires.backend import xp_of
from minires.ops._util import as_tensor, check_float
from minires.tensor import Tensor


def dropout_mask(shape: tuple[int, ...], p: float, device: str) -> Any:
    """A boolean keep-mask of ``shape`` (True with probability 1 - p), on ``device``."""
    keep = random.generator().random(shape, dtype=np.float32) >= np.float32(p)
    return backend.to_device(keep, device)


class DropoutFunction(Function):
    """y = x * mask / (1 - p); backward multiplies the gradient by the same scaled mask."""

    @staticmethod
    def forward(ctx: Context, x: Any, p: float) -> Any:
        xp = xp_of(x)
        keep = dropout_mask(x.shape, p, backend.device_of(x))
        scaled = xp.multiply(keep, x.dtype.type(1.0 / (1.0 - p)), dtype=x.dtype)
        ctx.save_for_backward(scaled)
        return x * scaled

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None]:
        (scaled,) = ctx.saved_tensors
        return g * scaled, None


class DropAll(Function):
    """p == 1: every element dropped; the output and the gradient are zeros."""

    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        return xp_of(x).zeros_like(x)

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        return xp_of(g).zeros_like(g)


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Inverted dropout of x (any shape): in training, zero each element with probability p and scale
    the rest by 1 / (1 - p) so the expectation is unchanged; identity when not training or p == 0."""
    x = as_tensor(x)
    check_float("dropout", x)
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"dropout: probability p must be between 0 and 1, got {p}")
    if not training or p == 0:
        return x
    if p == 1:
        return DropAll.apply(x)
    return DropoutFunction.apply(x, float(p))
