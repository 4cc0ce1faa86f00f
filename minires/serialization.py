"""``save`` / ``load``: state dicts to ``.npz`` and back, never pickle.

Nested dicts are flattened to dotted keys (``{"model": {"fc.weight": w}}`` -> ``"model.fc.weight"``)
and come back flat; values are arrays, Tensors or numbers. The file is written to a temporary name
in the same folder and renamed into place, so a crash mid-write never leaves a half-written file
where a good one stood.
"""

from __future__ import annotations

import inspect
import os
import tempfile
import zipfile
from typing import Any, Mapping

import numpy as np

from minires import backend
from minires.tensor import Tensor

_SAVEZ_PARAMETERS = {
    name for name, p in inspect.signature(np.savez).parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
}


def _flatten(state: Mapping[str, Any], prefix: str, out: dict[str, np.ndarray]) -> None:
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"save: keys must be strings, got {key!r} ({type(key).__name__})")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _flatten(value, name + ".", out)
            continue
        if isinstance(value, Tensor):
            value = value.data
        try:
            array = backend.to_numpy(value)
        except TypeError:
            array = np.asarray(value)
        if array.dtype == object:
            raise TypeError(f"save: value for {name!r} is a {type(value).__name__}, not an array or number")
        if name in out:
            raise ValueError(f"save: key {name!r} appears twice after flattening nested dicts")
        out[name] = array


def save(state: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a (possibly nested) dict of arrays/Tensors/numbers to ``path`` as ``.npz``, atomically."""
    arrays: dict[str, np.ndarray] = {}
    _flatten(state, "", arrays)
    reserved = sorted(set(arrays) & _SAVEZ_PARAMETERS)
    if reserved:  # np.savez takes the keys as keyword arguments: "file" would collide, "allow_pickle" vanish
        raise ValueError(
            f"save: key {reserved[0]!r} is a parameter name of np.savez and cannot be a top-level key; "
            "nest it (e.g. {'state': {...}}) or rename it"
        )
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a ``.npz`` written by :func:`save` (or numpy) into a flat dict of numpy arrays.

    Pickled object arrays are refused (``allow_pickle=False``): no code from the file ever runs.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load: no file at {path!r}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # np.load would take anything else for a .npy or a pickle
        raise ValueError(f"load: {path!r} is not a readable .npz file (it does not start like a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ValueError as exc:
        if "pickle" in str(exc):
            raise ValueError(f"load: {path!r} holds pickled objects, which minires refuses to load ({exc})") from None
        raise ValueError(f"load: {path!r} is not a readable .npz file (ValueError: {exc})") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"load: {path!r} is not a readable .npz file ({type(exc).__name__}: {exc})") from None
