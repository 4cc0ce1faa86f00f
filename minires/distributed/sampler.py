"""``DistributedSampler``: each rank's share of a data set's indices for one epoch (PyTorch's semantics).

Every rank draws the same permutation (seeded by ``seed + epoch``), pads it by repeating its first
indices until its length divides by the number of ranks (or, with ``drop_last``, cuts the tail), and
keeps every ``num_replicas``-th index from its rank: ``indices[rank::num_replicas]``. So per epoch the
ranks together see every example once (the padded few twice), and all ranks have the same number of
samples, hence of batches — which matters: a rank with one batch more would wait forever in its extra
gradient all-reduce. Call :meth:`set_epoch` before each epoch (the DataLoader does) for a new order.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np

from minires.distributed.group import world


class DistributedSampler:
    """Indices of ``dataset`` for rank ``rank`` of ``num_replicas`` (both default to the process group's)."""

    def __init__(
        self,
        dataset: Any,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.num_replicas = world().size if num_replicas is None else int(num_replicas)
        self.rank = world().rank if rank is None else int(rank)
        if self.num_replicas < 1:
            raise ValueError(f"DistributedSampler: num_replicas must be >= 1, got {self.num_replicas}")
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"DistributedSampler: rank must be in [0, {self.num_replicas - 1}], got {self.rank}")
        self.dataset_length = len(dataset)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        n, r = self.dataset_length, self.num_replicas
        self.num_samples = (n // r) if drop_last else math.ceil(n / r)  # per rank
        self.total_size = self.num_samples * r

    def set_epoch(self, epoch: int) -> None:
        """The next iteration yields epoch ``epoch``'s share (a new permutation when shuffling)."""
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, as an int64 array of length ``num_samples``."""
        n = self.dataset_length
        order = np.random.default_rng(self.seed + self.epoch).permutation(n) if self.shuffle else np.arange(n)
        if self.total_size > n:  # pad with the first indices (repeated when there are fewer than the padding)
            order = np.concatenate([order, np.resize(order, self.total_size - n)])
        return order[self.rank : self.total_size : self.num_replicas].astype(np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (f"DistributedSampler(rank {self.rank} of {self.num_replicas}, {self.num_samples} of "
                f"{self.dataset_length} samples, shuffle={self.shuffle}, seed={self.seed}, epoch={self.epoch})")
