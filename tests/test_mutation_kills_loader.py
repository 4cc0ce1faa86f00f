"""DataLoader behaviour a mutation run (docs/mutation_testing.md) found unguarded: PyTorch's defaults,
datasets that are not minires Datasets, the prefetch thread's life (daemon, closed at once, retrying on a
full queue, patient with a slow dataset) and per-rank augmentation under a distributed sampler."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

import minires.distributed as dist
from minires.data import ArrayDataset, DataLoader, RandomHorizontalFlip

THREAD_NAME = "minires-DataLoader-prefetch"


def _alive_prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


def _numbered(n: int) -> ArrayDataset:
    """n images (1, 2, 2) whose pixels all equal their index; label = index."""
    images = np.repeat(np.arange(n, dtype=np.float32), 4).reshape(n, 1, 2, 2)
    return ArrayDataset(images, np.arange(n), classes=[str(i) for i in range(n)])


def test_defaults_are_pytorchs_one_sample_batches_in_order_on_the_cpu() -> None:
    loader = DataLoader(_numbered(5))
    assert len(loader) == 5
    batches = [(x.numpy(), y.numpy()) for x, y in loader]
    assert [y.tolist() for _, y in batches] == [[0], [1], [2], [3], [4]]
    assert all(x.shape == (1, 1, 2, 2) and x.dtype == np.float32 for x, _ in batches)
    assert loader.device == "cpu" and loader.prefetch == 2


class _PlainPairs:
    """A map-style dataset that is not a minires Dataset: no get_batch, labels as numpy int32 scalars."""

    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int) -> tuple[np.ndarray, Any]:
        return np.full((1, 2, 2), float(i), np.float32), np.int32(10 + i)


class _Int32Batches:
    """A dataset with its own get_batch that hands labels back as int32."""

    def __len__(self) -> int:
        return 4

    def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.repeat(np.asarray(indices, np.float32), 4).reshape(-1, 1, 2, 2)
        return images, np.asarray(indices, dtype=np.int32) * 2


@pytest.mark.parametrize("prefetch", [0, 2])
def test_any_map_style_dataset_is_stacked_and_labels_become_int64(prefetch: int) -> None:
    out = [(x.numpy(), y.numpy()) for x, y in DataLoader(_PlainPairs(), batch_size=2, prefetch=prefetch)]
    assert [y.tolist() for _, y in out] == [[10, 11], [12, 13], [14]]
    assert all(y.dtype == np.int64 for _, y in out)
    np.testing.assert_array_equal(out[1][0][:, 0, 0, 0], [2.0, 3.0])
    got = [(x.numpy(), y.numpy()) for x, y in DataLoader(_Int32Batches(), batch_size=3, prefetch=prefetch)]
    assert [y.tolist() for _, y in got] == [[0, 2, 4], [6]]
    assert all(y.dtype == np.int64 for _, y in got)
    np.testing.assert_array_equal(got[0][0][:, 0, 0, 0], [0.0, 1.0, 2.0])


def test_the_prefetch_thread_is_a_daemon_and_close_joins_it_at_once() -> None:
    """While an epoch is in flight one named daemon thread prepares batches (a daemon never keeps the
    interpreter alive); ``close()`` stops and joins it before returning, and the iterator is then spent."""
    before = set(_alive_prefetch_threads())
    it = iter(DataLoader(_numbered(40), batch_size=2, prefetch=2))
    assert next(it)[1].numpy().tolist() == [0, 1]
    mine = [t for t in _alive_prefetch_threads() if t not in before]
    assert len(mine) == 1 and mine[0].daemon
    it.close()
    assert not mine[0].is_alive()  # joined inside close(), no waiting here
    with pytest.raises(StopIteration):
        next(it)


class _SlowBatches:
    """get_batch sleeps: the main thread must wait for the prefetch thread, not give up on it."""

    def __init__(self, n: int, delay: float) -> None:
        self.n, self.delay = n, delay

    def __len__(self) -> int:
        return self.n

    def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(self.delay)
        return np.zeros((len(indices), 1, 1, 1), np.float32), np.asarray(indices, np.int64)


def test_a_slow_dataset_is_waited_for() -> None:
    labels = [y.numpy().tolist() for _, y in DataLoader(_SlowBatches(3, 0.25), batch_size=1, prefetch=1)]
    assert labels == [[0], [1], [2]]


def test_a_slow_consumer_gets_every_batch() -> None:
    """The thread fills the queue (depth 1) and then keeps retrying while the consumer is busy."""
    got = []
    for _, y in DataLoader(_numbered(5), batch_size=1, prefetch=1):
        time.sleep(0.12)
        got.append(int(y.numpy()[0]))
    assert got == [0, 1, 2, 3, 4]


def _flips(rank: int, seed: int = 3) -> list[bool]:
    """Which images rank ``rank`` of 2 flips in epoch 0, on a dataset of one left/right-asymmetric image."""
    image = np.array([[[0.0, 1.0]]], np.float32)  # (1, 1, 2): left 0, right 1
    data = ArrayDataset(np.repeat(image[None], 32, axis=0), np.zeros(32, np.int64))
    sampler = dist.DistributedSampler(data, num_replicas=2, rank=rank, shuffle=False)
    loader = DataLoader(data, batch_size=16, seed=seed, prefetch=0, sampler=sampler, transform=RandomHorizontalFlip())
    (x, _), = list(loader)
    return (x.numpy()[:, 0, 0, 0] == 1.0).tolist()


def test_each_rank_augments_differently_and_reproducibly() -> None:
    """Under a distributed sampler each rank draws its own augmentation (else every rank would flip the
    same positions of its share), and a rank's draws are a function of (seed, epoch, rank)."""
    r0, r1 = _flips(0), _flips(1)
    assert r0 == _flips(0) and r1 == _flips(1)
    assert 0 < sum(r0) < 16 and 0 < sum(r1) < 16  # p=0.5 on 16 images: some of each
    assert r0 != r1


def test_batch_indices_of_a_chosen_epoch_follow_the_sampler() -> None:
    """``batch_indices(epoch)`` lists an epoch's batches without loading: under a sampler, the sampler's
    order for that epoch (it is told the epoch), cut into batches."""
    data = _numbered(10)
    loader = DataLoader(data, batch_size=2, prefetch=0, sampler=dist.DistributedSampler(data, 2, 1, seed=7))
    reference = dist.DistributedSampler(data, 2, 1, seed=7)
    reference.set_epoch(3)
    order = list(reference)
    got = loader.batch_indices(epoch=3)
    assert [b.tolist() for b in got] == [order[0:2], order[2:4], order[4:5]]
    assert loader.epoch == 0  # listing does not advance the loader
