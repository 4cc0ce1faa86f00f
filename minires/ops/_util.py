"""Small helpers shared by the op families: operand conversion, broadcasting undo, axis checks."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from minires import backend
from minires.tensor import DEFAULT_FLOAT, Tensor


def as_tensor(value: Any, like: Tensor | None = None) -> Tensor:
    """Turn an operand into a Tensor: Python scalars take ``like``'s dtype and device.

    As in PyTorch, a scalar never widens the tensor's dtype: a float scalar with an integer or bool
    tensor is float32, an int scalar with a bool tensor int64, and numpy scalars (``np.float64(2)``)
    mix in like Python numbers when there is a ``like``. numpy arrays keep their dtype and stay on
    the CPU (mixing them with a GPU tensor raises the device error, as it should, rather than
    copying silently).
    """
    if isinstance(value, Tensor):
        return value
    if like is not None and isinstance(value, np.generic) and value.dtype.kind in "biuf":
        value = value.item()
    if isinstance(value, (bool, int, float)) and not isinstance(value, np.generic):
        if like is None:
            dtype = DEFAULT_FLOAT if isinstance(value, float) else np.dtype(np.int64)
            return Tensor._from_array(np.asarray(value, dtype=dtype))
        dtype = like.dtype
        if isinstance(value, float) and dtype.kind not in "fc":
            dtype = DEFAULT_FLOAT
        elif not isinstance(value, bool) and dtype.kind == "b":
            dtype = np.dtype(np.int64)
        xp = backend.xp_of(like.data)
        return Tensor._from_array(xp.asarray(value, dtype=dtype))
    if isinstance(value, (np.ndarray, np.generic)):
        return Tensor._from_array(np.asarray(value))
    try:
        backend.device_of(value)
    except TypeError:
        raise TypeError(f"expected a Tensor, a number or an array, got {type(value).__name__}") from None
    return Tensor._from_array(value)


def array_of(x: Any) -> Any:
    """The raw array of a Tensor (an array stays itself): for values a backward uses as constants
    (signs, masks, tie shares), so one backward serves arrays and, under create_graph, Tensors."""
    return x.data if isinstance(x, Tensor) else x


def sum_to_shape(grad: Any, shape: tuple[int, ...]) -> Any:
    """Undo broadcasting: sum ``grad`` over the axes that broadcasting added or stretched.
    Works on arrays and on Tensors alike (it uses only ``.sum(axis=..., keepdims=...)``)."""
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
    """``dim`` (None, int or sequence, negatives allowed) as a sorted tuple of axes; None means all.

    A 0-d tensor accepts dim 0 or -1, as PyTorch; it has no axis to name, so that gives ``()``.
    """
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
    return tuple(sorted(out)) if ndim else ()


def check_float(name: str, t: Tensor) -> None:
    if t.dtype.kind not in "fc":
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")


def quiet(xp: Any) -> Any:
    """Silence numpy's divide/invalid warnings (0 / 0, log 0) for values the op defines itself; cupy never warns."""
    return np.errstate(divide="ignore", invalid="ignore") if xp is np else contextlib.nullcontext()
