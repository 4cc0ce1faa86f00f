"""Helpers the layers share: creating parameter and buffer storage on a device and dtype."""

from __future__ import annotations

from typing import Any

import numpy as np

from minires import backend
from minires.nn.parameter import Parameter
from minires.tensor import DEFAULT_FLOAT, Tensor


def empty_array(shape: tuple[int, ...], device: Any = None, dtype: Any = None, fill: float = 0.0) -> Any:
    """A ``shape`` array filled with ``fill``, on ``device`` (default CPU), float32 unless ``dtype``."""
    array = np.full(shape, fill, dtype=DEFAULT_FLOAT if dtype is None else np.dtype(dtype))
    return backend.to_device(array, "cpu" if device is None else device)


def new_parameter(shape: tuple[int, ...], device: Any = None, dtype: Any = None, fill: float = 0.0) -> Parameter:
    """A Parameter of ``shape`` (to be initialised by the layer's ``reset_parameters``)."""
    return Parameter(empty_array(shape, device, dtype, fill))


def new_buffer(shape: tuple[int, ...], device: Any = None, dtype: Any = None, fill: float = 0.0) -> Tensor:
    """A plain (non-trainable) Tensor for ``register_buffer``."""
    return Tensor(empty_array(shape, device, dtype, fill))
