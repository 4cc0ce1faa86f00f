"""Small helpers shared by the op families: operand conversion, broadcasting undo, axis checks."""

from __future__ import annotations

from typing import Any

import numpy as np

from minires import backend
from minires.tensor import DEFAULT_FLOAT, Tensor


def as_tensor(value: Any, like: Tensor | None = None) -> Tensor:
    """Turn an operand into a Tensor: Python scalars take ``like``'s dtype and device.

    numpy arrays keep their dtype and stay on the CPU (mixing them with a GPU tensor raises the
    device error, as it should, rather than copying silently).
    """
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (bool, int, float)) and not isinstance(value, np.generic):
        if like is None:
            dtype = DEFAULT_FLOAT if isinstance(value, float) else np.dtype(np.int64)
            return Tensor._from_array(np.asarray(value, dtype=dtype))
        dtype = like.dtype
        if isinstance(value, float) and dtype.kind not in "fc":
            dtype = DEFAULT_FLOAT
        xp = backend.xp_of(like.data)
        return Tensor._from_array(xp.asarray(value, dtype=dtype))
    if isinstance(value, (np.ndarray, np.generic)):
        return Tensor._from_array(np.asarray(value))
    try:
        backend.device_of(value)
    except TypeError:
        raise TypeError(f"expected a Tensor, a number or an array, got {type(value).__name__}") from None
    return Tensor._from_array(value)


def sum_to_shape(grad: Any, shape: tuple[int, ...]) -> Any:
    """Undo broadcasting: sum ``grad`` over the axes that broadcasting added or stretched."""
    if tuple(grad.shape) == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


def normalize_axes(name: str, dim: Any, ndim: int) -> tuple[int, ...] | None:
    """``dim`` (None, int or sequence, negatives allowed) as a sorted tuple of axes; None means all."""
    if dim is None:
        return None
    dims = (dim,) if isinstance(dim, (int, np.integer)) else tuple(dim)
    out = []
    for d in dims:
        d = int(d)
        if not -max(ndim, 1) <= d < max(ndim, 1):
            raise IndexError(f"{name}: dim {d} is out of range for a tensor with {ndim} dimensions")
        out.append(d % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: dim {dim} repeats an axis")
    return tuple(sorted(out))


def check_float(name: str, t: Tensor) -> None:
    if t.dtype.kind not in "fc":
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
