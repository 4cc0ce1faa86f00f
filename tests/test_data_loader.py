"""DataLoader: batching, seeded per-epoch shuffling, exact resume, prefetch thread, shutdown and errors."""

from __future__ import annotations

import gc
import threading
import time
import traceback
from typing import Any

import numpy as np
import pytest

import minires as mr
from minires.data import ArrayDataset, Compose, DataLoader, Dataset, RandomCrop, RandomHorizontalFlip

THREAD_NAME = "minires-DataLoader-prefetch"


def _indexed(n: int, dtype: Any = np.float32) -> ArrayDataset:
    """n images (1, 4, 4) whose pixels all equal their index; label = index % 7."""
    images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 1, 4, 4)).astype(dtype)
    return ArrayDataset(images, np.arange(n) % 7, classes=[str(i) for i in range(7)])


def _ids(batch: tuple[mr.Tensor, mr.Tensor]) -> np.ndarray:
    return batch[0].numpy()[:, 0, 0, 0].astype(np.int64)


def _epoch(loader: DataLoader) -> list[np.ndarray]:
    return [_ids(b) for b in loader]


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


def _wait_no_threads(timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gc.collect()
        if not _prefetch_threads():
            return True
        time.sleep(0.02)
    return False


def _with_timeout(fn: Any, timeout: float = 10.0) -> Any:
    """Run fn in a thread; fail (rather than hang the suite) if it does not finish in time."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            result["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"timed out after {timeout}s (hang)"
    if "error" in result:
        raise result["error"]
    return result.get("value")


@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize(
    "n,bs,drop_last,sizes",
    [(10, 3, False, [3, 3, 3, 1]), (10, 3, True, [3, 3, 3]), (9, 3, True, [3, 3, 3]), (5, 8, False, [5]), (5, 8, True, [])],
)
def test_batch_count_and_sizes(n: int, bs: int, drop_last: bool, sizes: list[int], prefetch: int) -> None:
    loader = DataLoader(_indexed(n), batch_size=bs, drop_last=drop_last, prefetch=prefetch)
    assert len(loader) == len(sizes)
    assert [len(b) for b in _epoch(loader)] == sizes


def test_batches_are_tensors_on_device(device: str) -> None:
    loader = DataLoader(_indexed(10), batch_size=4, device=device, prefetch=1)
    for images, labels in loader:
        assert isinstance(images, mr.Tensor) and isinstance(labels, mr.Tensor)
        assert images.device == device and labels.device == device
        assert images.dtype == np.float32 and labels.dtype == np.int64
        np.testing.assert_array_equal(labels.numpy(), _ids((images, labels)) % 7)
        assert not images.requires_grad


def test_uint8_images_become_unit_floats(device: str) -> None:
    raw = np.random.default_rng(0).integers(0, 256, size=(6, 3, 2, 2), dtype=np.uint8)
    ds = ArrayDataset(raw, np.zeros(6, np.int64))
    images, _ = next(iter(DataLoader(ds, batch_size=6, device=device, prefetch=0)))
    assert images.dtype == np.float32
    np.testing.assert_allclose(images.numpy(), raw / 255.0, rtol=1e-6)


def test_no_shuffle_is_in_order() -> None:
    assert np.concatenate(_epoch(DataLoader(_indexed(11), batch_size=4))).tolist() == list(range(11))


@pytest.mark.parametrize("prefetch", [0, 3])
def test_every_sample_once_per_epoch(prefetch: int) -> None:
    loader = DataLoader(_indexed(23), batch_size=5, shuffle=True, seed=1, prefetch=prefetch)
    for _ in range(3):
        seen = np.concatenate(_epoch(loader))
        assert sorted(seen.tolist()) == list(range(23))


def test_drop_last_shuffled_drops_different_samples() -> None:
    loader = DataLoader(_indexed(23), batch_size=5, shuffle=True, drop_last=True, seed=2)
    dropped = []
    for _ in range(4):
        seen = np.concatenate(_epoch(loader))
        assert len(seen) == 20 and len(set(seen.tolist())) == 20
        dropped.append(tuple(sorted(set(range(23)) - set(seen.tolist()))))
    assert len(set(dropped)) > 1


def test_shuffle_reproducible_and_different_across_epochs() -> None:
    a = DataLoader(_indexed(40), batch_size=8, shuffle=True, seed=5)
    b = DataLoader(_indexed(40), batch_size=8, shuffle=True, seed=5)
    c = DataLoader(_indexed(40), batch_size=8, shuffle=True, seed=6)
    epochs_a = [np.concatenate(_epoch(a)) for _ in range(3)]
    epochs_b = [np.concatenate(_epoch(b)) for _ in range(3)]
    for ea, eb in zip(epochs_a, epochs_b):
        np.testing.assert_array_equal(ea, eb)
    assert not np.array_equal(epochs_a[0], epochs_a[1]) and not np.array_equal(epochs_a[1], epochs_a[2])
    assert not np.array_equal(epochs_a[0], np.concatenate(_epoch(c)))
    assert not np.array_equal(epochs_a[0], np.arange(40))


def test_seed_none_follows_manual_seed() -> None:
    mr.manual_seed(3)
    a = np.concatenate(_epoch(DataLoader(_indexed(30), batch_size=7, shuffle=True)))
    mr.manual_seed(3)
    b = np.concatenate(_epoch(DataLoader(_indexed(30), batch_size=7, shuffle=True)))
    np.testing.assert_array_equal(a, b)


def test_resume_from_state_is_exact() -> None:
    """Batches and augmentation of epoch k after set_state equal those of an uninterrupted loader."""
    ds = ArrayDataset(np.random.default_rng(0).random((20, 2, 6, 6), dtype=np.float32), np.arange(20) % 3)
    aug = Compose([RandomCrop(6, padding=2), RandomHorizontalFlip()])
    full = DataLoader(ds, batch_size=6, shuffle=True, seed=9, transform=aug)
    runs = [[(x.numpy(), y.numpy()) for x, y in full] for _ in range(3)]
    resumed = DataLoader(ds, batch_size=6, shuffle=True, seed=123, transform=aug)
    partial = DataLoader(ds, batch_size=6, shuffle=True, seed=9, transform=aug)
    list(partial)
    state = partial.get_state()
    assert state == {"seed": 9, "epoch": 1}
    mr.manual_seed(999)  # global RNG must not matter
    resumed.set_state(state)
    for expected in runs[1:]:
        got = [(x.numpy(), y.numpy()) for x, y in resumed]
        for (ex, ey), (gx, gy) in zip(expected, got, strict=True):
            np.testing.assert_array_equal(gx, ex)
            np.testing.assert_array_equal(gy, ey)
    assert resumed.batch_indices(0)[0].tolist() == DataLoader(ds, 6, shuffle=True, seed=9).batch_indices()[0].tolist()


def test_prefetch_gives_same_batches_as_synchronous() -> None:
    ds = ArrayDataset(np.random.default_rng(1).random((37, 3, 8, 8), dtype=np.float32), np.arange(37) % 10)
    aug = Compose([RandomCrop(8, padding=2), RandomHorizontalFlip()])
    sync = DataLoader(ds, batch_size=8, shuffle=True, seed=4, transform=aug, prefetch=0)
    threaded = DataLoader(ds, batch_size=8, shuffle=True, seed=4, transform=aug, prefetch=2)
    for _ in range(2):
        a = [(x.numpy(), y.numpy()) for x, y in sync]
        b = [(x.numpy(), y.numpy()) for x, y in threaded]
        assert len(a) == len(b) == 5
        for (ax, ay), (bx, by) in zip(a, b):
            np.testing.assert_array_equal(ax, bx)
            np.testing.assert_array_equal(ay, by)
    assert _wait_no_threads()


class _LeadDataset(ArrayDataset):
    """Records how far the prefetch thread ever ran ahead of the consumer (``consumed`` is set by the test)."""

    def __init__(self, n: int) -> None:
        super().__init__(np.zeros((n, 1, 2, 2), np.float32), np.zeros(n, np.int64))
        self.calls = 0
        self.consumed = 0
        self.max_lead = 0

    def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        self.max_lead = max(self.max_lead, self.calls - self.consumed)
        return super().get_batch(indices)


def _wait_for(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


@pytest.mark.parametrize("prefetch", [1, 2])
def test_prefetch_queue_depth_is_bounded(prefetch: int) -> None:
    """After each batch the consumer waits until the thread has filled the queue and holds one more batch
    waiting for room (a lower bound, so no timing can fail it); the thread never gets further ahead than
    that: ``prefetch`` queued + one in hand. ``consumed`` counts a batch as soon as it is asked for, so the
    thread's loading of the next batch the moment one is taken is never counted as running ahead."""
    n = 12
    ds = _LeadDataset(n)
    it = iter(DataLoader(ds, batch_size=1, prefetch=prefetch))
    for _ in range(n):
        ds.consumed += 1
        next(it)
        assert _wait_for(lambda: ds.calls >= min(n, ds.consumed + prefetch + 1)), "the thread did not fill its queue"
    assert ds.max_lead == prefetch + 1
    it.close()
    assert _wait_no_threads()


def test_early_break_does_not_hang() -> None:
    def run() -> int:
        loader = DataLoader(_LeadDataset(1000), batch_size=2, prefetch=2)
        count = 0
        for _ in range(3):  # break three epochs early, each leaving a worker blocked on a full queue
            for _batch in loader:
                count += 1
                if count % 2 == 0:
                    break
        return count

    assert _with_timeout(run) == 6
    assert _wait_no_threads(), "prefetch thread still alive after break"


class _Failing(Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if index == 6:
            raise KeyError(f"sample {index} is broken")
        return np.zeros((1, 2, 2), np.float32), 0


@pytest.mark.parametrize("prefetch", [0, 2])
def test_worker_exception_propagates_with_traceback(prefetch: int) -> None:
    loader = DataLoader(_Failing(), batch_size=2, prefetch=prefetch)
    got = []

    def run() -> None:
        for images, _ in loader:
            got.append(images.shape[0])

    with pytest.raises(KeyError, match="sample 6 is broken") as info:
        _with_timeout(run)
    assert got == [2, 2, 2]
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "__getitem__" in frames  # the traceback reaches into the worker's frames
    assert _wait_no_threads()


def test_transform_exception_propagates() -> None:
    def bad(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("augmentation failed")

    with pytest.raises(RuntimeError, match="augmentation failed"):
        _with_timeout(lambda: list(DataLoader(_indexed(8), batch_size=4, transform=bad, prefetch=2)))
    assert _wait_no_threads()


def test_generic_dataset_and_plain_transform(device: str) -> None:
    class Squares(Dataset):
        def __len__(self) -> int:
            return 5

        def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
            return np.full((1, 2, 2), float(i), np.float32), i

    loader = DataLoader(Squares(), batch_size=2, device=device, transform=lambda x: x * 2)
    batches = [(x.numpy(), y.numpy()) for x, y in loader]
    assert [y.tolist() for _, y in batches] == [[0, 1], [2, 3], [4]]
    np.testing.assert_array_equal(batches[1][0][:, 0, 0, 0], [4.0, 6.0])


def test_argument_checks() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(_indexed(3), batch_size=0)
    with pytest.raises(ValueError, match="prefetch"):
        DataLoader(_indexed(3), prefetch=-1)
    with pytest.raises(ValueError, match="labels must be"):
        ArrayDataset(np.zeros((3, 1, 2, 2)), np.zeros(2, np.int64))
