"""CIFAR-10/100 readers: tiny official-layout folders and .tar.gz archives made here, hostile and corrupt files."""

from __future__ import annotations

import os
import pickle
import tarfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from minires.data import (
    CIFAR_URL,
    CifarFormatError,
    DataLoader,
    UnsafePickleError,
    get_dataset,
    load_cifar10,
    load_cifar100,
)
from minires.data.cifar import restricted_loads

N = 10  # images per batch file
C10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _dump(path: Path, obj: object, protocol: int = 4) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def _batch(rng: np.random.Generator, n: int, label_key: str, num_classes: int, **extra: object) -> dict:
    labels = [int(v) for v in rng.integers(0, num_classes, size=n)]
    d = {b"batch_label": b"testing batch", b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)}
    d[label_key.encode()] = labels
    d[b"filenames"] = [f"img_{i}.png".encode() for i in range(n)]
    d.update({k.encode(): v for k, v in extra.items()})
    return d


def make_cifar10(root: Path, seed: int = 0) -> tuple[Path, dict]:
    """root/cifar-10-batches-py in the official layout (5 train batches + test of N images); returns (folder, written)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        written[name] = _batch(rng, N, "labels", 10)
        _dump(folder / name, written[name])
    _dump(folder / "batches.meta", {b"num_cases_per_batch": N, b"label_names": [n.encode() for n in C10_NAMES], b"num_vis": 3072})
    return folder, written


def make_cifar100(root: Path, seed: int = 1) -> tuple[Path, dict]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for name, n in (("train", 2 * N), ("test", N)):
        d = _batch(rng, n, "fine_labels", 100)
        d[b"coarse_labels"] = [int(v) for v in rng.integers(0, 20, size=n)]
        written[name] = d
        _dump(folder / name, d)
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    _dump(folder / "meta", meta)
    return folder, written


def make_tar(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def _expected(written: dict, names: list[str], label_key: bytes = b"labels") -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([written[n][b"data"] for n in names]).reshape(-1, 3, 32, 32)
    y = np.concatenate([np.asarray(written[n][label_key]) for n in names])
    return x, y


TRAIN10 = [f"data_batch_{i}" for i in range(1, 6)]


# ----- loading back what was written ------------------------------------------------------------
@pytest.mark.parametrize("where", ["folder", "parent", "archive", "archive_parent"])
def test_cifar10_round_trip_every_layout(tmp_path: Path, where: str) -> None:
    folder, written = make_cifar10(tmp_path / "src")
    if where == "folder":
        data_dir = folder
    elif where == "parent":
        data_dir = folder.parent
    else:
        (tmp_path / "arch").mkdir()
        archive = make_tar(folder, tmp_path / "arch" / "cifar-10-python.tar.gz")
        data_dir = archive if where == "archive" else archive.parent
    train = load_cifar10(data_dir, train=True)
    test = load_cifar10(data_dir, train=False)
    x, y = _expected(written, TRAIN10)
    assert train.images.dtype == np.uint8 and train.images.shape == (5 * N, 3, 32, 32)
    np.testing.assert_array_equal(train.images, x)
    np.testing.assert_array_equal(train.labels, y)
    assert train.labels.dtype == np.int64
    xt, yt = _expected(written, ["test_batch"])
    np.testing.assert_array_equal(test.images, xt)
    np.testing.assert_array_equal(test.labels, yt)
    assert train.classes == C10_NAMES and test.classes == C10_NAMES
    assert len(train.mean) == 3 and len(train.std) == 3


def test_cifar10_channel_layout_is_official(tmp_path: Path) -> None:
    """Row i of 'data' is 1024 red, 1024 green, 1024 blue bytes, each 32x32 row-major."""
    folder, written = make_cifar10(tmp_path)
    ds = load_cifar10(folder)
    row = written["data_batch_1"][b"data"][3]
    np.testing.assert_array_equal(ds.images[3, 1, 2, 5], row[1024 + 2 * 32 + 5])
    np.testing.assert_array_equal(ds.images[3, 2, 31, 0], row[2048 + 31 * 32])


def test_loader_converts_cifar_to_float(tmp_path: Path, device: str) -> None:
    folder, written = make_cifar10(tmp_path)
    ds = load_cifar10(folder, train=False)
    images, labels = next(iter(DataLoader(ds, batch_size=N, device=device, prefetch=0)))
    assert images.dtype == np.float32 and images.device == device
    np.testing.assert_allclose(images.numpy(), written["test_batch"][b"data"].reshape(-1, 3, 32, 32) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(labels.numpy(), written["test_batch"][b"labels"])
    np.testing.assert_allclose(ds[0][0], written["test_batch"][b"data"][0].reshape(3, 32, 32) / 255.0, rtol=1e-6)


@pytest.mark.parametrize("as_archive", [False, True])
def test_cifar100_round_trip_fine_and_coarse(tmp_path: Path, as_archive: bool) -> None:
    folder, written = make_cifar100(tmp_path / "src")
    data_dir = make_tar(folder, tmp_path / "cifar-100-python.tar.gz") if as_archive else folder.parent
    fine = load_cifar100(data_dir)
    np.testing.assert_array_equal(fine.images, written["train"][b"data"].reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(fine.labels, written["train"][b"fine_labels"])
    assert fine.classes == [f"fine{i}" for i in range(100)]
    coarse = load_cifar100(data_dir, train=False, label_type="coarse")
    np.testing.assert_array_equal(coarse.labels, written["test"][b"coarse_labels"])
    assert coarse.classes == [f"coarse{i}" for i in range(20)] and len(coarse) == N


def test_get_dataset_by_name(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    assert len(get_dataset("cifar10", tmp_path, train=False)) == N
    with pytest.raises(ValueError, match="never downloads"):
        get_dataset("cifar10")
    with pytest.raises(ValueError, match="unknown dataset"):
        get_dataset("imagenet", tmp_path)


def test_legacy_numpy_core_global_is_accepted(tmp_path: Path) -> None:
    """The official files (numpy 1.x era) name numpy.core.multiarray._reconstruct; that name is allowed too."""
    raw = pickle.dumps({b"data": np.arange(6, dtype=np.uint8).reshape(2, 3)}, protocol=3)
    assert b"numpy._core.multiarray\n_reconstruct" in raw
    legacy = raw.replace(b"numpy._core.multiarray\n_reconstruct", b"numpy.core.multiarray\n_reconstruct")
    out = restricted_loads(legacy, "legacy")
    np.testing.assert_array_equal(out[b"data"], np.arange(6, dtype=np.uint8).reshape(2, 3))


# ----- hostile pickles --------------------------------------------------------------------------
class _SystemCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",))


@pytest.mark.parametrize("payload", [_SystemCall, _Eval])
@pytest.mark.parametrize("as_archive", [False, True])
def test_hostile_pickle_is_refused_and_never_runs(tmp_path: Path, payload: type, as_archive: bool) -> None:
    folder, written = make_cifar10(tmp_path / "src")
    marker = tmp_path / "PWNED"
    evil = dict(written["test_batch"])
    evil[b"labels"] = payload(marker)
    _dump(folder / "test_batch", evil)
    data_dir = make_tar(folder, tmp_path / "cifar-10-python.tar.gz") if as_archive else folder
    with pytest.raises(UnsafePickleError) as info:
        load_cifar10(data_dir, train=False)
    msg = str(info.value)
    assert "test_batch" in msg and "refused" in msg and CIFAR_URL in msg
    assert ("system" in msg) if payload is _SystemCall else ("eval" in msg)
    assert not marker.exists()


def test_hostile_pickle_is_really_hostile(tmp_path: Path) -> None:
    """Control: the same payload does run under plain pickle.loads, so the refusal above is meaningful."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Eval(marker)))
    assert marker.exists()


@pytest.mark.parametrize("obj", [np.float64(1.0), complex(1, 2), OrderedDict(a=1), dict], ids=["npscalar", "complex", "odict", "type"])
def test_other_globals_refused(obj: object) -> None:
    """Even harmless globals outside the numpy-array trio are refused: nothing a CIFAR file doesn't need."""
    with pytest.raises(UnsafePickleError, match="refused"):
        restricted_loads(pickle.dumps({b"x": obj}, protocol=4), "somefile")


# ----- corrupt and missing files ----------------------------------------------------------------
def _corrupt_and_load(tmp_path: Path, name: str, obj: object) -> str:
    folder, _ = make_cifar10(tmp_path)
    _dump(folder / name, obj)
    with pytest.raises(CifarFormatError) as info:
        load_cifar10(folder, train=name != "test_batch")
    msg = str(info.value)
    assert str(folder / name) in msg and CIFAR_URL in msg
    return msg


def test_missing_key(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    batch = _batch(rng, N, "labels", 10)
    del batch[b"labels"]
    assert "missing key 'labels'" in _corrupt_and_load(tmp_path, "data_batch_2", batch)


def test_wrong_shape(tmp_path: Path) -> None:
    batch = _batch(np.random.default_rng(0), N, "labels", 10)
    batch[b"data"] = batch[b"data"][:, :3000]
    assert "(10, 3000)" in _corrupt_and_load(tmp_path, "data_batch_4", batch)


def test_wrong_dtype(tmp_path: Path) -> None:
    batch = _batch(np.random.default_rng(0), N, "labels", 10)
    batch[b"data"] = batch[b"data"].astype(np.float32)
    assert "float32" in _corrupt_and_load(tmp_path, "test_batch", batch)


def test_label_count_mismatch(tmp_path: Path) -> None:
    batch = _batch(np.random.default_rng(0), N, "labels", 10)
    batch[b"labels"] = batch[b"labels"][:-1]
    assert "9 'labels' for 10 images" in _corrupt_and_load(tmp_path, "test_batch", batch)


def test_label_out_of_range(tmp_path: Path) -> None:
    batch = _batch(np.random.default_rng(0), N, "labels", 10)
    batch[b"labels"][4] = 10
    msg = _corrupt_and_load(tmp_path, "data_batch_1", batch)
    assert "label 10" in msg and "out of range" in msg


def test_not_a_dict(tmp_path: Path) -> None:
    assert "expected a pickled dict" in _corrupt_and_load(tmp_path, "data_batch_5", [1, 2, 3])


def test_bad_meta(tmp_path: Path) -> None:
    msg = _corrupt_and_load(tmp_path, "batches.meta", {b"label_names": [b"a", b"b"]})
    assert "10 class names" in msg


def test_truncated_batch_file(tmp_path: Path) -> None:
    folder, _ = make_cifar10(tmp_path)
    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CifarFormatError, match="truncated or corrupt") as info:
        load_cifar10(folder)
    assert str(folder / "data_batch_3") in str(info.value) and CIFAR_URL in str(info.value)


@pytest.mark.parametrize("missing", ["data_batch_3", "batches.meta"])
def test_missing_batch_file(tmp_path: Path, missing: str) -> None:
    folder, _ = make_cifar10(tmp_path)
    (folder / missing).unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(folder)
    assert str(folder / missing) in str(info.value) and CIFAR_URL in str(info.value)


def test_nothing_there(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz") as info:
        load_cifar10(tmp_path)
    assert CIFAR_URL in str(info.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar100(tmp_path / "nope")


def test_truncated_archive(tmp_path: Path) -> None:
    folder, _ = make_cifar10(tmp_path / "src")
    archive = make_tar(folder, tmp_path / "cifar-10-python.tar.gz")
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(CifarFormatError, match="truncated") as info:
        load_cifar10(archive)
    assert str(archive) in str(info.value) and CIFAR_URL in str(info.value)


def test_not_an_archive(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"this is not a gzip file" * 10)
    with pytest.raises(CifarFormatError, match="cannot read the archive") as info:
        load_cifar10(tmp_path)
    assert str(archive) in str(info.value)


def test_archive_missing_member(tmp_path: Path) -> None:
    folder, _ = make_cifar10(tmp_path / "src")
    (folder / "data_batch_2").unlink()
    archive = make_tar(folder, tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(CifarFormatError, match="cifar-10-batches-py/data_batch_2") as info:
        load_cifar10(archive)
    assert str(archive) in str(info.value)
    assert len(load_cifar10(archive, train=False)) == N  # the test split needs no data_batch_2


def test_cifar100_missing_fine_labels(tmp_path: Path) -> None:
    folder, written = make_cifar100(tmp_path)
    bad = dict(written["test"])
    del bad[b"fine_labels"]
    _dump(folder / "test", bad)
    with pytest.raises(CifarFormatError, match="missing key 'fine_labels'") as info:
        load_cifar100(folder, train=False)
    assert str(folder / "test") in str(info.value)
    assert len(load_cifar100(folder, train=False, label_type="coarse")) == N
