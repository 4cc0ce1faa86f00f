"""``DistributedDataParallel``: one model replica per process, kept identical by averaging gradients.

What it does, and when:

- **at construction**, rank 0's parameters and buffers are broadcast to every rank, so all replicas
  start from the same weights whatever each process's random initialisation was;
- **after each backward**, you call :meth:`DistributedDataParallel.sync_gradients` (explicitly, between
  ``loss.backward()`` and ``optimizer.step()``): every parameter's ``.grad`` becomes the mean over the
  ranks, reduced in a few flat buckets in a fixed order (the parameters in reverse, roughly the order
  backward produces them). Each rank's loss is the mean over its own batch, so the averaged gradient is
  the gradient of the mean loss over the global batch (ranks x per-rank batch), as one process would get;
- **each training forward** (``broadcast_buffers=True``, PyTorch's default) re-broadcasts rank 0's
  buffers (BatchNorm running statistics), so every rank evaluates and saves the same model.

Why explicit: minires' backward has no "backward finished" callback to hang the reduction on, and an
explicit call makes the communication visible where it happens, next to gradient clipping (which must
see the averaged gradients). A forgotten call is caught: the next training forward raises, instead
of letting the replicas silently drift apart. For gradient accumulation, run the accumulating
backwards inside ``with model.no_sync():`` and call ``sync_gradients()`` once before the step.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from minires.autograd.grad_mode import is_grad_enabled
from minires.distributed.buckets import Bucket, make_buckets
from minires.distributed.group import world
from minires.nn import Module
from minires.tensor import Tensor


def broadcast_tensors(buckets: list[Bucket], src: int = 0) -> None:
    """Overwrite every tensor of ``buckets`` with rank ``src``'s values (one broadcast per bucket)."""
    comm = world()
    for bucket in buckets:
        comm.broadcast(bucket.pack([t.data for t in bucket.tensors]), src)
        for t, view in zip(bucket.tensors, bucket.views()):
            t.data[...] = view


def average_gradients(buckets: list[Bucket]) -> None:
    """Replace each parameter's ``.grad`` by its mean over the ranks (a missing grad counts as zeros)."""
    comm = world()
    for bucket in buckets:
        comm.all_reduce(bucket.pack([None if p.grad is None else p.grad.data for p in bucket.tensors]), "mean")
        for p, view in zip(bucket.tensors, bucket.views()):
            if p.grad is None:
                p.grad = Tensor(view.copy())
            else:
                p.grad.data[...] = view


class DistributedDataParallel(Module):
    """Wrap ``module`` for data-parallel training; see the module docstring for the protocol.

    ``model.module`` is the wrapped model (save ``model.module.state_dict()`` to get keys without the
    ``module.`` prefix). ``bucket_cap_mb`` bounds one message (PyTorch's default 25 MB)."""

    def __init__(self, module: Module, bucket_cap_mb: float = 25.0, broadcast_buffers: bool = True) -> None:
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected an nn.Module, got {type(module).__name__}")
        self.module = module
        self.broadcast_buffers = broadcast_buffers
        cap = max(1, int(bucket_cap_mb * 2**20))
        trainable = [p for p in module.parameters() if p.requires_grad]
        self._grad_buckets = make_buckets(list(reversed(trainable)), cap)
        self._buffer_buckets = make_buckets([b for b in module.buffers() if b is not None], cap)
        broadcast_tensors(make_buckets(list(module.parameters()), cap) + self._buffer_buckets)
        self._require_sync = True  # False inside no_sync()
        self._unsynced = False  # a backward outside no_sync() left gradients that were not averaged yet
        for p in trainable:
            p.register_hook(self._note_gradient)

    def _note_gradient(self, grad: Tensor) -> None:
        if self._require_sync:
            self._unsynced = True

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.training and is_grad_enabled():
            if self._unsynced and self._require_sync:
                raise RuntimeError(
                    "DistributedDataParallel: the gradients of the last backward were never averaged across the "
                    "ranks; call model.sync_gradients() after loss.backward() and before optimizer.step() (or run "
                    "accumulating backwards inside `with model.no_sync():`)"
                )
            if self.broadcast_buffers and world().size > 1:
                broadcast_tensors(self._buffer_buckets)
        return self.module(*args, **kwargs)

    def sync_gradients(self) -> None:
        """Average every trainable parameter's ``.grad`` over the ranks (call after ``loss.backward()``)."""
        if world().size > 1:
            average_gradients(self._grad_buckets)
        self._unsynced = False

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backwards inside this block accumulate local gradients without counting as unsynchronised."""
        previous, self._require_sync = self._require_sync, False
        try:
            yield
        finally:
            self._require_sync = previous

    def extra_repr(self) -> str:
        sizes = ", ".join(str(b.size) for b in self._grad_buckets)
        return f"world_size={world().size}, gradient buckets=[{sizes}] elements"
