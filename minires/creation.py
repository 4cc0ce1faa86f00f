"""Making tensors: from data, filled, random (seeded through :func:`manual_seed`), ranges."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from minires import backend
from minires.random import generator
from minires.tensor import DEFAULT_FLOAT, Tensor


def _dtype(dtype: Any, default: Any = DEFAULT_FLOAT) -> np.dtype:
    if dtype is None:
        return np.dtype(default)
    try:
        return np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype: {dtype!r} is not a dtype (use mr.float32, mr.float64, mr.int64, ...)") from None


def _size(shape: Sequence[Any]) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    try:
        out = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"size: expected ints, got {shape!r}") from None
    if any(s < 0 for s in out):
        raise ValueError(f"size: dims must be >= 0, got {out}")
    return out


def _made(array: Any, device: Any, requires_grad: bool) -> Tensor:
    return Tensor(backend.to_device(array, device), requires_grad=requires_grad)


def tensor(data: Any, dtype: Any = None, device: Any = "cpu", requires_grad: bool = False) -> Tensor:
    """A new leaf tensor holding a copy of ``data`` (a list, number, numpy/cupy array or Tensor).

    Python floats become float32 and Python ints int64 (PyTorch's defaults); arrays keep their
    dtype unless ``dtype`` is given.
    """
    if isinstance(data, Tensor):
        data = data.data
    device = backend.parse_device(device)
    if isinstance(data, (np.ndarray, np.generic)):
        array = np.array(data, dtype=dtype, copy=True)
    else:
        try:
            source_device = backend.device_of(data)
        except TypeError:
            source_device = None
        if source_device is not None:
            array = backend.to_device(data, device).astype(dtype or data.dtype, copy=True)
            return Tensor(array, requires_grad=requires_grad)
        try:
            array = np.array(data)
        except ValueError:  # numpy >= 1.24 refuses ragged nested lists outright
            array = np.array(None, dtype=object)
        if array.dtype.kind not in "biufc":
            raise TypeError(f"tensor: cannot make a tensor from {type(data).__name__} (ragged or non-numeric data)")
        if dtype is None and array.dtype.kind == "f":
            array = array.astype(DEFAULT_FLOAT)
        elif dtype is None and array.dtype.kind in "iu":
            array = array.astype(np.int64)
        elif dtype is not None:
            array = array.astype(_dtype(dtype))
    return _made(array, device, requires_grad)


def as_tensor(data: Any, dtype: Any = None, device: Any = None) -> Tensor:
    """Like :func:`tensor`, but shares memory with a numpy/cupy array when it can."""
    if isinstance(data, Tensor):
        return data.to(device, dtype)
    try:
        source = backend.device_of(data)
    except TypeError:
        return tensor(data, dtype=dtype, device=device or "cpu")
    array = backend.to_device(data, device or source)
    if dtype is not None:
        array = array.astype(_dtype(dtype), copy=False)
    return Tensor(array)


def zeros(*size: Any, dtype: Any = None, device: Any = "cpu", requires_grad: bool = False) -> Tensor:
    return Tensor(backend.get_xp(device).zeros(_size(size), dtype=_dtype(dtype)), requires_grad=requires_grad)


def ones(*size: Any, dtype: Any = None, device: Any = "cpu", requires_grad: bool = False) -> Tensor:
    return Tensor(backend.get_xp(device).ones(_size(size), dtype=_dtype(dtype)), requires_grad=requires_grad)


def full(size: Sequence[int], fill_value: float, dtype: Any = None, device: Any = "cpu", requires_grad: bool = False) -> Tensor:
    """A tensor of ``size`` filled with ``fill_value``; without ``dtype``, the fill value's kind picks it
    as PyTorch does: bool -> bool, int -> int64, float -> float32."""
    if dtype is None and isinstance(fill_value, (bool, np.bool_)):
        dtype = np.bool_
    elif dtype is None and isinstance(fill_value, (int, np.integer)):
        dtype = np.int64
    xp = backend.get_xp(device)
    return Tensor(xp.full(_size([size]), fill_value, dtype=_dtype(dtype)), requires_grad=requires_grad)


def zeros_like(t: Tensor, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    return zeros(t.shape, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad)


def ones_like(t: Tensor, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    return ones(t.shape, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad)


def full_like(t: Tensor, fill_value: float, dtype: Any = None, device: Any = None) -> Tensor:
    return full(t.shape, fill_value, dtype=dtype or t.dtype, device=device or t.device)


def eye(n: int, m: int | None = None, dtype: Any = None, device: Any = "cpu", requires_grad: bool = False) -> Tensor:
    return Tensor(backend.get_xp(device).eye(n, m, dtype=_dtype(dtype)), requires_grad=requires_grad)


def arange(start: float, end: float | None = None, step: float = 1, dtype: Any = None, device: Any = "cpu") -> Tensor:
    """Values from ``start`` to ``end`` (exclusive); int64 when all arguments are ints, else float32."""
    if end is None:
        start, end = 0, start
    all_int = all(isinstance(v, (int, np.integer)) for v in (start, end, step))
    default = np.int64 if all_int else DEFAULT_FLOAT
    return Tensor(backend.get_xp(device).arange(start, end, step, dtype=_dtype(dtype, default)))


def linspace(start: float, end: float, steps: int, dtype: Any = None, device: Any = "cpu") -> Tensor:
    return Tensor(backend.get_xp(device).linspace(start, end, steps, dtype=_dtype(dtype)))


def randn(*size: Any, dtype: Any = None, device: Any = "cpu", requires_grad: bool = False) -> Tensor:
    """Standard normal samples from minires' global generator (seed it with ``mr.manual_seed``)."""
    array = generator().standard_normal(_size(size)).astype(_dtype(dtype))
    return _made(array, device, requires_grad)


def rand(*size: Any, dtype: Any = None, device: Any = "cpu", requires_grad: bool = False) -> Tensor:
    """Uniform samples in [0, 1) from minires' global generator."""
    array = generator().random(_size(size)).astype(_dtype(dtype))
    return _made(array, device, requires_grad)


def randint(low: int, high: int, size: Sequence[int], dtype: Any = None, device: Any = "cpu") -> Tensor:
    array = generator().integers(low, high, size=_size([size]), dtype=_dtype(dtype, np.int64))
    return _made(array, device, False)


def randperm(n: int, device: Any = "cpu") -> Tensor:
    return _made(generator().permutation(n).astype(np.int64), device, False)
