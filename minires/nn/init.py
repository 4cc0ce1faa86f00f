"""Parameter initialisation (PyTorch's ``nn.init``): in place on ``tensor.data``, returning the tensor.

Random draws come from minires' global generator (``mr.manual_seed`` makes them reproducible) or
from the ``generator`` given, always on the host and then moved to the tensor's device, so a seed
gives the same weights on the CPU and the GPU. Formulas, for a weight of shape (out, in, *kernel)
with fan_in = in * prod(kernel) and fan_out = out * prod(kernel):

- kaiming (He et al. 2015): std = gain / sqrt(fan), uniform bound = sqrt(3) * std
- xavier (Glorot & Bengio 2010): std = gain * sqrt(2 / (fan_in + fan_out)), bound = sqrt(3) * std
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from minires import backend
from minires.random import generator as global_generator
from minires.tensor import Tensor

_LINEAR_GAINS = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                 "conv_transpose3d", "sigmoid")


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended scale of the weights for a nonlinearity (relu: sqrt(2), tanh: 5/3, ...)."""
    if nonlinearity in _LINEAR_GAINS:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = float(param)
        else:
            raise ValueError(f"calculate_gain: negative_slope {param!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def _calculate_fan_in_and_fan_out(tensor: Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight shaped (out, in, *kernel)."""
    if tensor.ndim < 2:
        raise ValueError(
            f"Fan in and fan out can not be computed for tensor with fewer than 2 dimensions (got shape {tensor.shape})"
        )
    receptive_field = math.prod(tensor.shape[2:])
    return tensor.shape[1] * receptive_field, tensor.shape[0] * receptive_field


def _calculate_correct_fan(tensor: Tensor, mode: str) -> int:
    mode = mode.lower()
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def _fill(tensor: Tensor, draw: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray],
          generator: np.random.Generator | None) -> Tensor:
    """Write ``draw(rng, shape)`` (a host array) into ``tensor.data`` in place, cast and moved."""
    if tensor.data.size == 0:
        return tensor
    rng = global_generator() if generator is None else generator
    values = np.asarray(draw(rng, tensor.shape)).astype(tensor.dtype, copy=False)
    tensor.data[...] = backend.to_device(values, tensor.device)
    tensor._bump_version()
    return tensor


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0, generator: np.random.Generator | None = None) -> Tensor:
    """Fill with values drawn from U(a, b)."""
    return _fill(tensor, lambda rng, shape: rng.uniform(a, b, size=shape), generator)


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, generator: np.random.Generator | None = None) -> Tensor:
    """Fill with values drawn from N(mean, std^2)."""
    return _fill(tensor, lambda rng, shape: rng.normal(mean, std, size=shape), generator)


def trunc_normal_(
    tensor: Tensor,
    mean: float = 0.0,
    std: float = 1.0,
    a: float = -2.0,
    b: float = 2.0,
    generator: np.random.Generator | None = None,
) -> Tensor:
    """Fill from N(mean, std^2) restricted to [a, b] (redrawing the values that fall outside)."""
    if not a < b:
        raise ValueError(f"trunc_normal_: need a < b, got a={a}, b={b}")

    def draw(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        out = rng.normal(mean, std, size=shape)
        for _ in range(1000):
            outside = (out < a) | (out > b)
            count = int(outside.sum())
            if count == 0:
                return out
            out[outside] = rng.normal(mean, std, size=count)
        raise ValueError(f"trunc_normal_: [a, b] = [{a}, {b}] holds almost no mass of N({mean}, {std}^2)")

    return _fill(tensor, draw, generator)


def constant_(tensor: Tensor, val: float) -> Tensor:
    """Fill with ``val``."""
    tensor.data[...] = val
    tensor._bump_version()
    return tensor


def zeros_(tensor: Tensor) -> Tensor:
    return constant_(tensor, 0)


def ones_(tensor: Tensor) -> Tensor:
    return constant_(tensor, 1)


def xavier_uniform_(tensor: Tensor, gain: float = 1.0, generator: np.random.Generator | None = None) -> Tensor:
    """U(-bound, bound) with bound = gain * sqrt(6 / (fan_in + fan_out)) (Glorot uniform)."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    bound = math.sqrt(3.0) * gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor: Tensor, gain: float = 1.0, generator: np.random.Generator | None = None) -> Tensor:
    """N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out)) (Glorot normal)."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / float(fan_in + fan_out)), generator)


def _kaiming_std(tensor: Tensor, a: float, mode: str, nonlinearity: str) -> float:
    fan = _calculate_correct_fan(tensor, mode)
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)  # callers return early on empty tensors


def kaiming_uniform_(
    tensor: Tensor,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: np.random.Generator | None = None,
) -> Tensor:
    """U(-bound, bound) with bound = sqrt(3) * gain / sqrt(fan) (He uniform); ``a`` is leaky_relu's slope."""
    if tensor.data.size == 0:
        return tensor
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(
    tensor: Tensor,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: np.random.Generator | None = None,
) -> Tensor:
    """N(0, std^2) with std = gain / sqrt(fan) (He normal); ResNets use mode="fan_out", nonlinearity="relu"."""
    if tensor.data.size == 0:
        return tensor
    return normal_(tensor, 0.0, _kaiming_std(tensor, a, mode, nonlinearity), generator)


__all__ = [
    "calculate_gain", "constant_", "kaiming_normal_", "kaiming_uniform_", "normal_", "ones_",
    "trunc_normal_", "uniform_", "xavier_normal_", "xavier_uniform_", "zeros_",
]
