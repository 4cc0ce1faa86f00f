"""Training checkpoints: one ``.npz`` (written by :func:`minires.serialization.save_tree`) holding the
model's state dict, optimizer and scheduler state, epoch, RNG state and the run's settings — written
atomically (temp file + rename) and read without pickle.

The model's weights sit under ``model.<name>`` (``model.conv1.weight``, ...), so ``np.load`` alone
reads them too. ``load_checkpoint`` returns ``{"model": {name: array}, "optimizer": ..., ...}``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from minires.serialization import load_tree, save_tree

CHECKPOINT = "checkpoint.npz"  # the file name minires-train writes inside a run's --out folder


def save_checkpoint(path: str | os.PathLike[str], model_state: Mapping[str, Any], **sections: Any) -> None:
    """Write ``model_state`` (a state dict) and any other sections (optimizer=..., epoch=...) atomically."""
    if "model" in sections:
        raise ValueError("save_checkpoint: 'model' is reserved for the model's state dict")
    save_tree({"model": dict(model_state), **sections}, path)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (never unpickles anything)."""
    ckpt = load_tree(path)
    if "model" not in ckpt:
        raise ValueError(f"load_checkpoint: {os.fspath(path)!r} is not a minires training checkpoint (no model section)")
    return ckpt


def read_checkpoint_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config`` section of a ``minires-train`` checkpoint, read without loading the weights."""
    path = os.fspath(path)
    try:
        config = load_tree(path, sections=["config"]).get("config")
    except FileNotFoundError:
        raise FileNotFoundError(f"--resume: no checkpoint at {path!r}") from None
    except ValueError as exc:
        raise ValueError(f"--resume: {exc}") from None
    if config is None:
        raise ValueError(f"--resume: {path!r} has no 'config' section: not written by minires-train")
    return config
