"""Flat buckets: many tensors packed into a few contiguous arrays, so a collective runs once per bucket
instead of once per tensor (a ResNet-20 has 65 parameter tensors; one message costs the same latency
whether it carries 16 numbers or 16,000).

The order is fixed when the buckets are made (the caller's tensor order, split where a bucket would
pass ``cap_bytes`` or the dtype/device changes) and is the same on every rank, which is what lets
rank r's element i meet rank s's element i in the reduction. Used for gradient averaging and for
the start-up broadcast of parameters and buffers, by every communicator (MPI, NCCL, single).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from minires.backend import get_xp
from minires.tensor import Tensor


@dataclass
class Bucket:
    """Tensors of one dtype and device, laid end to end in ``flat`` at ``offsets``."""

    tensors: list[Tensor]
    dtype: np.dtype
    device: str
    offsets: list[int] = field(default_factory=list)
    flat: Any = None

    def __post_init__(self) -> None:
        self.offsets, total = [], 0
        for t in self.tensors:
            self.offsets.append(total)
            total += int(t.numel())
        self.flat = get_xp(self.device).zeros(total, dtype=self.dtype)

    def pack(self, arrays: Sequence[Any]) -> Any:
        """Copy ``arrays`` (one per tensor, shaped like it; None counts as zeros) into ``flat``; returns it."""
        for t, start, a in zip(self.tensors, self.offsets, arrays):
            view = self.flat[start : start + t.numel()]
            if a is None:
                view[...] = 0
            else:
                view[...] = a.reshape(-1)
        return self.flat

    def views(self) -> list[Any]:
        """``flat`` cut back into one array per tensor, with each tensor's shape (views, not copies)."""
        return [self.flat[start : start + t.numel()].reshape(t.shape) for t, start in zip(self.tensors, self.offsets)]


def make_buckets(tensors: Sequence[Tensor], cap_bytes: int) -> list[Bucket]:
    """Split ``tensors``, in order, into buckets of one dtype and device and at most ``cap_bytes`` each
    (a single tensor larger than the cap gets a bucket of its own)."""
    if cap_bytes < 1:
        raise ValueError(f"make_buckets: cap_bytes must be >= 1, got {cap_bytes}")
    buckets: list[Bucket] = []
    current: list[Tensor] = []
    size = 0
    for t in tensors:
        key = (np.dtype(t.dtype), t.device)
        if current and (key != (np.dtype(current[0].dtype), current[0].device) or size + t.data.nbytes > cap_bytes):
            buckets.append(Bucket(current, np.dtype(current[0].dtype), current[0].device))
            current, size = [], 0
        current.append(t)
        size += t.data.nbytes
    if current:
        buckets.append(Bucket(current, np.dtype(current[0].dtype), current[0].device))
    return buckets
