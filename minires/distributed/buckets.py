"""Flat buckets: many tensors packed into a few contiguous arrays, so a collective runs once per bucket
instead of once per tensor (a ResNet-20 has 65 parameter tensors; one message costs the same latency
whether it carries 16 numbers or 16,000).

The order is fixed when the buckets are made (the caller's tensor order, split where a bucket would
pass ``cap_bytes`` or the dtype/device changes) and is the same on every rank, which is what lets
rank r's element i meet rank s's element i in the reduction. Used for gradient averaging and for
the start-up broadcast of parameters and buffers, by every communicator (MPI, NCCL, single).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from minires.backend import device_of, get_xp
from minires.tensor import Tensor


class Bucket:
    """Tensors of one dtype and device, laid end to end in one flat array at ``offsets``.

    The flat array follows the tensors: if the model is moved or cast after the buckets were made
    (``model.to("cuda")`` after wrapping it), the next ``pack`` allocates it again where they now live."""

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        self.tensors = list(tensors)
        self.offsets: list[int] = []
        self.size = 0
        for t in self.tensors:
            self.offsets.append(self.size)
            self.size += int(t.numel())
        self.flat: Any = None

    def _buffer(self) -> Any:
        first = self.tensors[0]
        if self.flat is None or self.flat.dtype != first.dtype or device_of(self.flat) != first.device:
            self.flat = get_xp(first.device).zeros(self.size, dtype=first.dtype)
        return self.flat

    def pack(self, arrays: Sequence[Any]) -> Any:
        """Copy ``arrays`` (one per tensor, shaped like it; None counts as zeros) into the flat array; returns it."""
        flat = self._buffer()
        for t, start, a in zip(self.tensors, self.offsets, arrays):
            view = flat[start : start + t.numel()]
            if a is None:
                view[...] = 0
            else:
                view[...] = a.reshape(-1)
        return flat

    def views(self) -> list[Any]:
        """The flat array cut back into one array per tensor, with each tensor's shape (views, not copies)."""
        flat = self._buffer()
        return [flat[start : start + t.numel()].reshape(t.shape) for t, start in zip(self.tensors, self.offsets)]


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
            buckets.append(Bucket(current))
            current, size = [], 0
        current.append(t)
        size += t.data.nbytes
    if current:
        buckets.append(Bucket(current))
    return buckets
