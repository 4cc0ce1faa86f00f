"""``DataLoader``: batches of (images, labels) Tensors on a device, shuffled reproducibly, prefetched.

Per batch: gather the samples on the host (``dataset.get_batch``), move them to the device in one copy
(uint8 images travel as uint8 and become float32 [0, 1] there), apply the batch transform on that
device, wrap in Tensors. With ``prefetch > 0`` a background thread does all of this for the next
``prefetch`` batches while the main thread computes on the current one.

Randomness is a pure function of ``(seed, epoch)``: epoch ``e``'s order and augmentation come from
``SeedSequence([seed, e])``, never from shared global state, so the prefetch thread cannot perturb
anything else, ``prefetch=0`` and ``prefetch=2`` give identical batches, and saving
:meth:`DataLoader.get_state` (two ints) is enough to resume exactly.
"""

from __future__ import annotations

import math
import queue
import threading
from typing import Any, Callable, Iterator

import numpy as np

from minires import backend
from minires import random as mr_random
from minires.data.dataset import images_to_float, stack_samples
from minires.data.transforms import call_transform
from minires.tensor import Tensor

_JOIN_TIMEOUT_S = 10.0


class _WorkerError:
    """An exception raised in the prefetch thread, carried to the main thread (with its traceback)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


def _put(q: queue.Queue[Any], stop: threading.Event, item: Any) -> bool:
    """Put into the queue, waiting for room but giving up when asked to stop. False if stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _prefetch_worker(
    loader: DataLoader, batches: list[np.ndarray], augment_rng: np.random.Generator, q: queue.Queue[Any], stop: threading.Event
) -> None:
    """The prefetch thread: load each batch in order into ``q``, then _END; an error is sent as _WorkerError."""
    try:
        for idx in batches:
            if stop.is_set() or not _put(q, stop, loader._load(idx, augment_rng)):
                return
    except BaseException as exc:  # noqa: BLE001 - carried to the main thread and re-raised there
        _put(q, stop, _WorkerError(exc))
        return
    _put(q, stop, _END)


class DataLoader:
    """Iterate a dataset in batches: ``for images, labels in loader`` -> Tensors (B, C, H, W) float32, (B,) int64.

    - ``shuffle``: a new permutation each epoch, from ``(seed, epoch)``; ``seed=None`` draws one seed from
      minires' global generator at construction (so ``mr.manual_seed`` makes runs repeatable).
    - ``drop_last``: drop the final short batch; ``len(loader)`` is the number of batches either way.
    - ``sampler``: where the order comes from instead of ``shuffle`` (e.g. a
      :class:`minires.distributed.DistributedSampler`, which gets ``set_epoch`` each epoch; a sampler
      with a ``rank`` also gets its own augmentation randomness per rank).
    - ``device``: where batches are delivered ("cpu" or "cuda"); each batch is moved once.
    - ``transform``: a batch transform ``f(array (B, C, H, W)) -> array`` run on the batch's device on
      the raw array; :mod:`minires.data.transforms` objects get the epoch's generator as ``rng``.
    - ``prefetch``: batches prepared ahead by a background thread (0: synchronous, in the caller's thread).

    Each ``iter(loader)`` is one epoch and advances ``loader.epoch``. Stopping early (``break``) or an
    error in the worker shuts the thread down; a worker error is re-raised in the main thread with
    the worker's traceback.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 1,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int | None = None,
        device: Any = "cpu",
        transform: Callable[..., Any] | None = None,
        prefetch: int = 2,
        sampler: Any = None,
    ) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        if int(prefetch) < 0:
            raise ValueError(f"DataLoader: prefetch must be >= 0, got {prefetch}")
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: sampler and shuffle=True are mutually exclusive (the sampler decides the order)")
        self.sampler = sampler
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.device = backend.parse_device(device)
        self.transform = transform
        self.prefetch = int(prefetch)
        self.seed = int(seed) if seed is not None else int(mr_random.generator().integers(0, 2**63 - 1))
        self.epoch = 0

    # ----- state for exact resume -------------------------------------------------------------
    def get_state(self) -> dict[str, int]:
        """``{"seed", "epoch"}``: all the loader's randomness; the next ``iter`` runs epoch ``epoch``."""
        return {"seed": self.seed, "epoch": self.epoch}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s output: the next epoch is exactly the one it would have been."""
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter`` run epoch ``epoch`` (its order and augmentation)."""
        self.epoch = int(epoch)

    # ----- batching ---------------------------------------------------------------------------
    def __len__(self) -> int:
        n = len(self.dataset) if self.sampler is None else len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _epoch_generators(self, epoch: int) -> tuple[np.random.Generator, np.random.Generator]:
        rank = getattr(self.sampler, "rank", None)  # each rank of a distributed run augments differently
        order_seq, augment_seq = np.random.SeedSequence([self.seed, epoch] + ([] if rank is None else [rank])).spawn(2)
        return np.random.default_rng(order_seq), np.random.default_rng(augment_seq)

    def batch_indices(self, epoch: int | None = None) -> list[np.ndarray]:
        """The sample indices of each batch of epoch ``epoch`` (default: the next one), without loading."""
        epoch = self.epoch if epoch is None else int(epoch)
        order_rng, _ = self._epoch_generators(epoch)
        return self._split(order_rng, epoch)

    def _order(self, order_rng: np.random.Generator, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s sample order: the sampler's, a permutation, or 0..n-1."""
        if self.sampler is not None:
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(epoch)
            return np.fromiter(iter(self.sampler), dtype=np.int64)
        n = len(self.dataset)
        return order_rng.permutation(n) if self.shuffle else np.arange(n)

    def _split(self, order_rng: np.random.Generator, epoch: int) -> list[np.ndarray]:
        order = self._order(order_rng, epoch)
        n = len(order)
        stop = len(self) * self.batch_size if self.drop_last else n
        return [order[i : min(i + self.batch_size, stop)] for i in range(0, stop, self.batch_size)]

    def _load(self, indices: np.ndarray, augment_rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        get_batch = getattr(self.dataset, "get_batch", None)
        images, labels = get_batch(indices) if get_batch is not None else stack_samples(self.dataset, indices)
        images = images_to_float(backend.to_device(np.ascontiguousarray(images), self.device))
        labels = backend.to_device(np.asarray(labels, dtype=np.int64), self.device)
        if self.transform is not None:
            images = call_transform(self.transform, images, augment_rng)
        return Tensor(images), Tensor(labels)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order_rng, augment_rng = self._epoch_generators(self.epoch)
        batches = self._split(order_rng, self.epoch)
        self.epoch += 1
        if self.prefetch == 0:
            return (self._load(idx, augment_rng) for idx in batches)
        return _PrefetchIterator(self, batches, augment_rng)

    def __repr__(self) -> str:
        return (
            f"DataLoader({len(self.dataset)} samples, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, device={self.device!r}, prefetch={self.prefetch}, seed={self.seed})"
        )


class _PrefetchIterator:
    """One epoch's batches, made by a daemon thread into a queue of depth ``prefetch``.

    The thread stops when the epoch ends, when :meth:`close` is called (also on garbage collection,
    i.e. after a ``break``), or at its first error, which the main thread re-raises.
    """

    def __init__(self, loader: DataLoader, batches: list[np.ndarray], augment_rng: np.random.Generator) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=loader.prefetch)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=_prefetch_worker,
            args=(loader, batches, augment_rng, self._queue, self._stop),
            name="minires-DataLoader-prefetch",
            daemon=True,
        )  # the thread holds no reference to this iterator, so a `break` lets it be collected and closed
        self._thread.start()

    def __iter__(self) -> _PrefetchIterator:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        if self._done:
            raise StopIteration
        while True:
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self.close()
                    raise RuntimeError("DataLoader: the prefetch thread ended without delivering its batches") from None
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, _WorkerError):
            self.close()
            raise item.exc
        return item

    def close(self) -> None:
        """Stop the prefetch thread and drop the batches it had ready."""
        self._done = True
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=_JOIN_TIMEOUT_S)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
