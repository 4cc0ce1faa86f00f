"""Training checkpoints: one ``.npz`` holding model weights, optimizer and scheduler state, epoch and
RNG state — written atomically (temp file + rename) and read without pickle.

Layout of the file (all plain numpy arrays, so ``np.load(path, allow_pickle=False)`` reads it):

- ``model.<name>``: the model's state dict under its own key names (``model.conv1.weight``, ...);
- arrays found inside the other sections (optimizer momentum buffers, ...) under ``<section>.<path>``;
- ``__tree__``: a JSON string describing every section, with ``{"__array__": key}`` standing for
  each stored array.

``load_checkpoint`` returns ``{"model": {name: array}, "optimizer": ..., "scheduler": ..., ...}``.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Mapping

import numpy as np

from minires import backend
from minires.serialization import load, save
from minires.tensor import Tensor

TREE_KEY = "__tree__"


def _pack(value: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, Tensor):
        value = value.data
    if isinstance(value, Mapping):
        return {"__dict__": [[_key(k), _pack(v, f"{path}.{k}", arrays)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"__list__": [_pack(v, f"{path}.{i}", arrays) for i, v in enumerate(value)], "tuple": isinstance(value, tuple)}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    try:
        array = backend.to_numpy(value)
    except TypeError:
        raise TypeError(f"checkpoint: cannot store {type(value).__name__} at {path!r}") from None
    arrays[path] = array
    return {"__array__": path}


def _key(k: Any) -> Any:
    if isinstance(k, (str, int)):
        return k
    raise TypeError(f"checkpoint: dict keys must be str or int, got {k!r}")


def _unpack(node: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(node, dict):
        if "__array__" in node:
            key = node["__array__"]
            if key not in arrays:
                raise ValueError(f"checkpoint: the file lacks the array {key!r} its index names (corrupt file?)")
            return arrays[key]
        if "__dict__" in node:
            return {k: _unpack(v, arrays) for k, v in node["__dict__"]}
        if "__list__" in node:
            items = [_unpack(v, arrays) for v in node["__list__"]]
            return tuple(items) if node.get("tuple") else items
    return node


def save_checkpoint(path: str | os.PathLike[str], model_state: Mapping[str, Any], **sections: Any) -> None:
    """Write ``model_state`` (a state dict) and any other sections (optimizer=..., epoch=...) atomically."""
    arrays: dict[str, np.ndarray] = {}
    for name, value in model_state.items():
        arrays[f"model.{name}"] = backend.to_numpy(value.data if isinstance(value, Tensor) else value)
    tree = {name: _pack(value, name, arrays) for name, value in sections.items()}
    if "model" in tree:
        raise ValueError("save_checkpoint: 'model' is reserved for the model's state dict")
    arrays[TREE_KEY] = np.array(json.dumps(tree))
    save(arrays, path)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (never unpickles anything)."""
    flat = load(path)
    if TREE_KEY not in flat:
        raise ValueError(f"load_checkpoint: {os.fspath(path)!r} is not a minires training checkpoint (no {TREE_KEY!r} entry)")
    try:
        tree = json.loads(str(flat.pop(TREE_KEY)))
    except json.JSONDecodeError as exc:
        raise ValueError(f"load_checkpoint: {os.fspath(path)!r} has a corrupt index: {exc}") from None
    result: dict[str, Any] = {"model": {k[len("model.") :]: v for k, v in flat.items() if k.startswith("model.")}}
    for name, node in tree.items():
        result[name] = _unpack(node, flat)
    return result


def read_checkpoint_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config`` section of a ``minires-train`` checkpoint, read from its index alone (no weights)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"--resume: no checkpoint at {path!r}")
    try:
        with open(path, "rb") as f:
            if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
                raise ValueError("it does not start like a zip archive")
        with np.load(path, allow_pickle=False) as data:
            index = str(data[TREE_KEY]) if TREE_KEY in data.files else None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"--resume: {path!r} is not a readable .npz checkpoint ({type(exc).__name__}: {exc})") from None
    if index is None:
        raise ValueError(f"--resume: {path!r} is not a minires training checkpoint (no {TREE_KEY!r} entry)")
    try:
        config = json.loads(index).get("config")
    except json.JSONDecodeError as exc:
        raise ValueError(f"--resume: {path!r} has a corrupt index: {exc}") from None
    if config is None:
        raise ValueError(f"--resume: {path!r} has no 'config' section: not written by minires-train")
    return _unpack(config, {})
