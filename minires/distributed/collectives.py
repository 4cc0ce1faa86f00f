"""Collectives on Tensors and arrays (in place, as ``torch.distributed``), plus the two helpers a training
loop needs: :func:`all_reduce_metrics` for scalars and :func:`broadcast_object` for small settings.

Every rank must make the same calls in the same order; a rank that skips one leaves the others waiting.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

from minires.distributed.group import world
from minires.tensor import Tensor


def _array_of(what: str, x: Any) -> Any:
    array = x.data if isinstance(x, Tensor) else x
    if not hasattr(array, "dtype") or not hasattr(array, "flags"):
        raise TypeError(f"{what}: expected a Tensor or an array, got {type(x).__name__}")
    return array


def all_reduce(x: Any, op: str = "sum") -> Any:
    """Reduce a Tensor's data (or an array) over all ranks in place: op 'sum', 'mean', 'max' or 'min'.
    Returns ``x``."""
    world().all_reduce(_array_of("all_reduce", x), op)
    return x


def broadcast(x: Any, src: int = 0) -> Any:
    """Overwrite ``x`` (Tensor or array) on every rank with rank ``src``'s values, in place. Returns ``x``."""
    world().broadcast(_array_of("broadcast", x), src)
    return x


def barrier() -> None:
    """Wait until every rank gets here."""
    world().barrier()


def all_reduce_metrics(values: Mapping[str, float], op: str = "sum") -> dict[str, float]:
    """Reduce named numbers over all ranks in one float64 message: ``{"correct": 7, "seen": 10}`` ->
    the totals. Every rank must pass the same names in the same order."""
    names = list(values)
    packed = np.array([float(values[k]) for k in names], dtype=np.float64)
    world().all_reduce(packed, op)
    return {k: float(v) for k, v in zip(names, packed)}


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s JSON-serialisable ``obj`` on every rank (as JSON text, never a pickle)."""
    comm = world()
    payload = np.frombuffer(json.dumps(obj).encode("utf-8"), dtype=np.uint8) if comm.rank == src else None
    length = np.array([0 if payload is None else payload.size], dtype=np.int64)
    comm.broadcast(length, src)
    buffer = payload.copy() if payload is not None else np.empty(int(length[0]), dtype=np.uint8)
    comm.broadcast(buffer, src)
    return json.loads(buffer.tobytes().decode("utf-8"))
