"""CIFAR-10 and CIFAR-100 from a local copy of the official "python version" (never downloaded).

Accepted layouts (``data_dir`` may point at any of them, or at the folder that holds them):

- the extracted folder ``cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
  ``batches.meta``) or ``cifar-100-python/`` (``train``, ``test``, ``meta``);
- the archive as distributed, ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``, read in place
  with :mod:`tarfile` (nothing is extracted to disk).

The files are Python pickles. They are read with :class:`RestrictedUnpickler`, which resolves only the
three numpy names an array needs (``_reconstruct``, ``ndarray``, ``dtype``) and refuses every other
global, so a tampered file cannot run code; ``encoding="bytes"`` as in the official loader.

Images are returned as an :class:`~minires.data.ArrayDataset` of **uint8** ``(N, 3, 32, 32)`` arrays,
converted to float32 [0, 1] per batch by the DataLoader: CIFAR-10's training set takes 154 MB in
memory instead of 614 MB as float32. Labels are int64 ("labels" for CIFAR-10, "fine_labels" (or
"coarse_labels") for CIFAR-100), class names come from the meta file, and ``mean`` / ``std`` are the
standard per-channel statistics of the training set (below).
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minires.data.dataset import ArrayDataset

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

# Per-channel mean / std of the training images in [0, 1] (pixel statistics over all 50,000 images).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_ROW = 3 * 32 * 32  # one image: 1024 red, then 1024 green, then 1024 blue bytes, each row-major


class CifarFormatError(ValueError):
    """A CIFAR file or archive is malformed (the message names the file and what is wrong)."""


class UnsafePickleError(CifarFormatError, pickle.UnpicklingError):
    """A pickle asked for something a CIFAR file never holds; refused before any of it ran."""


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only what numpy arrays need; every other global is refused.

    CIFAR's pickles hold dicts of bytes keys, lists, ints, bytes and numpy arrays; an array pickles as
    ``numpy.core.multiarray._reconstruct`` (``numpy._core`` in numpy 2), ``numpy.ndarray`` and
    ``numpy.dtype``. Anything else (``os.system``, ``builtins.eval``, ...) raises
    :class:`UnsafePickleError` before it is called.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise UnsafePickleError(
                f"{self.source}: refused to unpickle the global {module}.{name}. CIFAR files hold only dicts, lists, "
                "bytes and numpy arrays, so this file is corrupt or was tampered with; none of its code was run. "
                f"Use the official archive from {CIFAR_URL}."
            )
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return np.ndarray if name == "ndarray" else np.dtype

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refused a persistent id in the pickle; CIFAR files have none")


def restricted_loads(data: bytes, source: str) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; ``source`` names the file in errors."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as exc:
        raise CifarFormatError(
            f"{source}: not a readable CIFAR pickle ({type(exc).__name__}: {exc}); the file is truncated or corrupt. "
            f"Re-extract it from the official archive at {CIFAR_URL}."
        ) from exc


@dataclass(frozen=True)
class _Spec:
    title: str  # "CIFAR-10"
    folder: str  # folder inside the archive
    archive: str  # archive file name as distributed
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def hint(self) -> str:
        return f"Download the '{self.title} python version' ({self.archive}) from {CIFAR_URL}; minires never downloads data."


CIFAR10 = _Spec(
    "CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
    tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta", CIFAR10_MEAN, CIFAR10_STD,
)  # fmt: skip
CIFAR100 = _Spec(
    "CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",), "meta", CIFAR100_MEAN, CIFAR100_STD,
)  # fmt: skip


# ----- finding and reading the files ---------------------------------------------------------------
def _locate(data_dir: str | os.PathLike[str], spec: _Spec) -> tuple[str, Path]:
    """("dir", folder) or ("tar", archive) for ``data_dir``: the folder, its parent, or the archive (or its folder)."""
    path = Path(data_dir).expanduser()
    if path.is_file():
        return "tar", path
    if not path.exists():
        raise FileNotFoundError(f"{spec.title}: {path} does not exist. {spec.hint()}")
    own_files = (spec.meta_file, *spec.train_files, *spec.test_files)
    if path.name == spec.folder or any((path / f).is_file() for f in own_files):
        return "dir", path
    if (path / spec.folder).is_dir():
        return "dir", path / spec.folder
    if (path / spec.archive).is_file():
        return "tar", path / spec.archive
    raise FileNotFoundError(
        f"{spec.title}: found neither the folder {path / spec.folder} (extracted) nor the archive {path / spec.archive} in {path}. "
        f"{spec.hint()}"
    )


def _read_dir(folder: Path, names: list[str], spec: _Spec) -> dict[str, tuple[bytes, str]]:
    out: dict[str, tuple[bytes, str]] = {}
    for name in names:
        file = folder / name
        if not file.is_file():
            raise FileNotFoundError(f"{spec.title}: missing file {file}. {spec.hint()}")
        out[name] = (file.read_bytes(), str(file))
    return out


def _read_tar(archive: Path, names: list[str], spec: _Spec) -> dict[str, tuple[bytes, str]]:
    """Read the members ``names`` (under ``spec.folder/``) in one pass over the archive, in memory."""
    out: dict[str, tuple[bytes, str]] = {}
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                parts = member.name.replace("\\", "/").strip("/").split("/")
                name = parts[-1]
                if name in names and name not in out and member.isfile() and (len(parts) == 1 or parts[-2] == spec.folder):
                    handle = tar.extractfile(member)
                    if handle is None:  # pragma: no cover - isfile() members always have data
                        continue
                    data = handle.read()
                    if len(data) != member.size:
                        raise EOFError(f"member {member.name} has {len(data)} of its {member.size} bytes")
                    out[name] = (data, f"{member.name} in {archive}")
                    if len(out) == len(names):
                        break
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CifarFormatError(
            f"{spec.title}: cannot read the archive {archive}: it is truncated or not a .tar.gz ({type(exc).__name__}: {exc}). "
            f"{spec.hint()}"
        ) from exc
    missing = [n for n in names if n not in out]
    if missing:
        raise CifarFormatError(
            f"{spec.title}: the archive {archive} has no member {spec.folder}/{missing[0]}"
            f"{' (also missing: ' + ', '.join(missing[1:]) + ')' if missing[1:] else ''}. {spec.hint()}"
        )
    return out


def _read_files(data_dir: str | os.PathLike[str], names: list[str], spec: _Spec) -> dict[str, tuple[bytes, str]]:
    kind, where = _locate(data_dir, spec)
    return _read_dir(where, names, spec) if kind == "dir" else _read_tar(where, names, spec)


# ----- checking the contents -----------------------------------------------------------------------
def _as_dict(obj: Any, source: str, spec: _Spec) -> dict[bytes, Any]:
    if not isinstance(obj, dict):
        raise CifarFormatError(f"{source}: expected a pickled dict, found {type(obj).__name__}. {spec.hint()}")
    return {(k.encode() if isinstance(k, str) else k): v for k, v in obj.items()}


def _get(d: dict[bytes, Any], key: str, source: str, spec: _Spec) -> Any:
    if key.encode() not in d:
        keys = ", ".join(sorted(k.decode(errors="replace") if isinstance(k, bytes) else repr(k) for k in d))
        raise CifarFormatError(f"{source}: missing key {key!r} (keys present: {keys}). {spec.hint()}")
    return d[key.encode()]


def _check_batch(obj: Any, source: str, spec: _Spec, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch dict -> (images (N, 3, 32, 32) uint8, labels (N,) int64), or an error naming what is wrong."""
    d = _as_dict(obj, source, spec)
    data = _get(d, "data", source, spec)
    labels = _get(d, label_key, source, spec)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
        what = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CifarFormatError(f"{source}: 'data' is a {what}, expected a uint8 array of shape (N, {_ROW}). {spec.hint()}")
    try:
        labels = np.asarray(labels)
    except Exception as exc:  # pragma: no cover - ragged nested lists
        raise CifarFormatError(f"{source}: {label_key!r} is not a list of integers ({exc}). {spec.hint()}") from exc
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise CifarFormatError(
            f"{source}: {label_key!r} must be a flat list of integers, got {labels.dtype} of shape {labels.shape}. {spec.hint()}"
        )
    if labels.size != data.shape[0]:
        raise CifarFormatError(f"{source}: {labels.size} {label_key!r} for {data.shape[0]} images in 'data'. {spec.hint()}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels[(labels < 0) | (labels >= num_classes)][0])
        raise CifarFormatError(f"{source}: label {bad} in {label_key!r} is out of range [0, {num_classes}). {spec.hint()}")
    return data.reshape(-1, 3, 32, 32), labels


def _check_names(obj: Any, source: str, spec: _Spec, key: str, count: int) -> list[str]:
    d = _as_dict(obj, source, spec)
    names = _get(d, key, source, spec)
    if not isinstance(names, (list, tuple)) or len(names) != count or not all(isinstance(n, (bytes, str)) for n in names):
        got = f"{len(names)} entries" if isinstance(names, (list, tuple)) else type(names).__name__
        raise CifarFormatError(f"{source}: {key!r} should list {count} class names, got {got}. {spec.hint()}")
    return [n.decode("utf-8", errors="replace") if isinstance(n, bytes) else n for n in names]


def _load(
    data_dir: str | os.PathLike[str], spec: _Spec, train: bool, label_key: str, names_key: str, num_classes: int
) -> ArrayDataset:
    batch_files = list(spec.train_files if train else spec.test_files)
    files = _read_files(data_dir, [*batch_files, spec.meta_file], spec)
    meta_bytes, meta_source = files[spec.meta_file]
    classes = _check_names(restricted_loads(meta_bytes, meta_source), meta_source, spec, names_key, num_classes)
    images, labels = [], []
    for name in batch_files:
        raw, source = files.pop(name)
        x, y = _check_batch(restricted_loads(raw, source), source, spec, label_key, num_classes)
        images.append(x)
        labels.append(y)
    split = "train" if train else "test"
    return ArrayDataset(
        np.concatenate(images) if len(images) > 1 else images[0],
        np.concatenate(labels) if len(labels) > 1 else labels[0],
        classes, spec.mean, spec.std, name=f"{spec.title.lower()}-{split}",
    )  # fmt: skip


def load_cifar10(data_dir: str | os.PathLike[str], train: bool = True) -> ArrayDataset:
    """CIFAR-10's training (50,000) or test (10,000) images: uint8 (N, 3, 32, 32), labels (N,) int64, 10 classes.

    ``data_dir``: ``cifar-10-batches-py/``, the folder holding it, ``cifar-10-python.tar.gz``, or the
    folder holding that. Raises FileNotFoundError / :class:`CifarFormatError` naming the file at fault.
    """
    return _load(data_dir, CIFAR10, train, "labels", "label_names", 10)


def load_cifar100(data_dir: str | os.PathLike[str], train: bool = True, label_type: str = "fine") -> ArrayDataset:
    """CIFAR-100's training (50,000) or test (10,000) images: uint8 (N, 3, 32, 32), labels (N,) int64.

    ``label_type`` "fine" (100 classes, the usual benchmark) or "coarse" (20 superclasses).
    ``data_dir``: ``cifar-100-python/``, the folder holding it, ``cifar-100-python.tar.gz``, or the
    folder holding that. Raises FileNotFoundError / :class:`CifarFormatError` naming the file at fault.
    """
    if label_type not in ("fine", "coarse"):
        raise ValueError(f"load_cifar100: label_type must be 'fine' or 'coarse', got {label_type!r}")
    count = 100 if label_type == "fine" else 20
    return _load(data_dir, CIFAR100, train, f"{label_type}_labels", f"{label_type}_label_names", count)
