"""``save`` / ``load``: state dicts to ``.npz`` and back, never pickle; ``save_tree`` / ``load_tree``:
any tree of dicts, lists, numbers, strings, None and arrays (optimizer and scheduler state, RNG
state), exactly.

``save``: nested dicts are flattened to dotted keys (``{"model": {"fc.weight": w}}`` ->
``"model.fc.weight"``) and come back flat; values are arrays, Tensors or numbers.

``save_tree``: every array is stored under its dotted path (``optimizer.state.0.momentum_buffer``)
and everything else in one JSON index (entry ``__tree__``), with ``{"__array__": key}`` standing for
each array; ``load_tree`` rebuilds the tree — int keys, tuples, None and big integers included — so
``np.load(path, allow_pickle=False)`` can still read every array.

Both write to a temporary name in the same folder and rename it into place, so a crash mid-write
never leaves a half-written file where a good one stood.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import tempfile
import zipfile
import zlib
from typing import Any, Iterator, Mapping, Sequence

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
    _write_npz(arrays, path)


def _write_npz(arrays: dict[str, np.ndarray], path: str | os.PathLike[str]) -> None:
    """``np.savez`` to a temporary file beside ``path``, then rename it into place."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file 0600; give it the mode open() would
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _open_npz(path: str | os.PathLike[str], op: str) -> Iterator[Any]:
    """``np.load`` with pickles refused and clear errors for missing, foreign or corrupt files."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{op}: no file at {path!r}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # np.load would take anything else for a .npy or a pickle
        raise ValueError(f"{op}: {path!r} is not a readable .npz file (it does not start like a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            yield data
    except ValueError as exc:
        if str(exc).startswith(f"{op}: "):  # our own message, raised while reading the file
            raise
        if "pickle" in str(exc):
            raise ValueError(f"{op}: {path!r} holds pickled objects, which minires refuses to load ({exc})") from None
        raise ValueError(f"{op}: {path!r} is not a readable .npz file (ValueError: {exc})") from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:  # zlib: a damaged compressed entry
        raise ValueError(f"{op}: {path!r} is not a readable .npz file ({type(exc).__name__}: {exc})") from None


def load(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a ``.npz`` written by :func:`save` (or numpy) into a flat dict of numpy arrays.

    Pickled object arrays are refused (``allow_pickle=False``): no code from the file ever runs.
    """
    with _open_npz(path, "load") as data:
        return {key: data[key] for key in data.files}


TREE_KEY = "__tree__"


def _pack(value: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    """``value`` as JSON-able data; arrays go into ``arrays`` under a unique dotted path."""
    if isinstance(value, Tensor):
        value = value.data
    if isinstance(value, Mapping):
        items = []
        for k, v in value.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"save_tree: dict keys must be str or int, got {k!r} at {path!r}")
            items.append([k, _pack(v, f"{path}.{k}" if path else str(k), arrays)])
        return {"__dict__": items}
    if isinstance(value, (list, tuple)):
        return {"__list__": [_pack(v, f"{path}.{i}", arrays) for i, v in enumerate(value)], "tuple": isinstance(value, tuple)}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    try:
        array = backend.to_numpy(value)
    except TypeError:
        raise TypeError(f"save_tree: cannot store a {type(value).__name__} at {path!r}") from None
    key, n = path, 1
    while key in arrays or key == TREE_KEY:  # e.g. key "a.b" beside {"a": {"b": ...}}
        n += 1
        key = f"{path}#{n}"
    arrays[key] = array
    return {"__array__": key}


def _unpack(node: Any, data: Any, op: str) -> Any:
    if isinstance(node, dict):
        if "__array__" in node:
            key = node["__array__"]
            if key not in data:
                raise ValueError(f"{op}: the file lacks the array {key!r} its index names (corrupt file?)")
            return data[key]
        if "__dict__" in node:
            return {k: _unpack(v, data, op) for k, v in node["__dict__"]}
        if "__list__" in node:
            items = [_unpack(v, data, op) for v in node["__list__"]]
            return tuple(items) if node.get("tuple") else items
    return node


def save_tree(tree: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a tree (dicts with str/int keys, lists, tuples, numbers, strings, None, arrays, Tensors)
    to ``path`` as ``.npz``, atomically; :func:`load_tree` gives it back exactly."""
    if not isinstance(tree, Mapping):
        raise TypeError(f"save_tree: expected a dict at the top, got {type(tree).__name__}")
    arrays: dict[str, np.ndarray] = {}
    index = _pack(tree, "", arrays)
    arrays[TREE_KEY] = np.array(json.dumps(index))
    _write_npz(arrays, path)


def load_tree(path: str | os.PathLike[str], sections: Sequence[str] | None = None) -> dict[str, Any]:
    """Read a file written by :func:`save_tree`; with ``sections``, only those top-level entries (the
    arrays of the others are never read). Never unpickles anything."""
    with _open_npz(path, "load_tree") as data:
        if TREE_KEY not in data.files:
            example = f" such as {data.files[0]!r}" if data.files else ""
            raise ValueError(
                f"load_tree: {os.fspath(path)!r} was not written by save_tree (no {TREE_KEY!r} index): it holds "
                f"{len(data.files)} plain arrays{example}, as mr.save or np.savez write them (a state dict?). "
                "Read it with mr.load(path), e.g. model.load_state_dict(mr.load(path))"
            )
        try:
            index = json.loads(str(data[TREE_KEY]))
        except json.JSONDecodeError as exc:
            raise ValueError(f"load_tree: {os.fspath(path)!r} has a corrupt index: {exc}") from None
        entries = dict(index.get("__dict__", []))
        wanted = list(entries) if sections is None else [s for s in sections if s in entries]
        return {name: _unpack(entries[name], data, "load_tree") for name in wanted}
