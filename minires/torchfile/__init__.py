"""Read PyTorch checkpoint files (``.pt``, ``.pth``, ``.th``) without PyTorch and without running their pickles.

``load_torch(path)`` reads both formats ``torch.save`` writes -- the zip archive of PyTorch >= 1.6 and the
older "legacy" stream (still written with ``_use_new_zipfile_serialization=False``, and the format of many
published checkpoints) -- and returns the saved object with every tensor as a NumPy array::

    ckpt = mr.load_torch("resnet56-4bfd9763.th")   # {"state_dict": {"module.conv1.weight": array, ...}, "best_prec1": 93.39}
    model.load_state_dict(mr.unwrap_state_dict(ckpt))

Dicts (``OrderedDict`` included) come back as plain dicts, nested as saved; lists, tuples, numbers, strings
stay as they are; ``torch.Size`` becomes a tuple and a ``torch.<dtype>`` the matching NumPy dtype.
Tensors saved together that share a storage -- ``w`` and ``w.t()``, slices at an offset, strided or
non-contiguous views -- each come back as their own C-contiguous copy with the values PyTorch would show.
Storages are read in the byte order the file records; ``bfloat16`` values are widened to float32 (exact).
GPU tensors load onto the CPU.

Safety: the pickle is read by :class:`~minires.torchfile.unpickler.TorchUnpickler`, which resolves only
tensor-rebuild functions, numeric storages and dtypes, ``OrderedDict``, ``torch.Size`` and a few plain
builtins, each to minires' own stand-in; any other global (``os.system``, ``builtins.eval``, a pickled
``nn.Module``) raises :class:`UnsafeTorchPickleError` naming it, and no code from the file ever runs.
A truncated or corrupt file raises :class:`TorchFileError` (a ``ValueError``) naming the file.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any, Mapping

import numpy as np

from minires.torchfile.errors import TorchFileError, UnsafeTorchPickleError
from minires.torchfile.legacy_format import MAGIC_NUMBER, read_legacy
from minires.torchfile.zip_format import read_zip

_TAR_MAGIC_OFFSET = 257  # "ustar" in a tar header: PyTorch < 0.4's tar-based format


def _format(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise TorchFileError(f"load_torch: {path!r} is empty")
    if head.startswith(b"PK"):
        return "zip"
    if head[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + 5] == b"ustar":
        raise TorchFileError(f"load_torch: {path!r} is in the tar-based format of PyTorch < 0.4, which minires does not read; "
                             "re-save it with a newer PyTorch (torch.save(torch.load(path), new_path))")
    return "legacy"


def load_torch(path: str | os.PathLike[str]) -> Any:
    """Read a file written by ``torch.save``: the saved object (usually a dict) with tensors as NumPy arrays.

    Raises FileNotFoundError, :class:`UnsafeTorchPickleError` (a refused global; nothing ran) or
    :class:`TorchFileError` (truncated, corrupt or not a PyTorch file); both are ValueErrors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_torch: no file at {path!r}")
    kind = _format(path)
    try:
        return read_zip(path) if kind == "zip" else read_legacy(path)
    except UnsafeTorchPickleError as exc:
        raise UnsafeTorchPickleError(f"load_torch: {path!r}: {exc}") from None
    except TorchFileError as exc:
        raise TorchFileError(f"load_torch: {path!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes the readers trip on
        raise TorchFileError(
            f"load_torch: {path!r} is not a readable PyTorch {kind} file ({type(exc).__name__}: {exc}); it is truncated or corrupt"
        ) from None


def is_torch_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a ``torch.save`` file (a zip with ``<archive>/data.pkl``, or the legacy
    stream's magic number) rather than, say, a minires ``.npz``. Reads only the file's directory or head."""
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return any(n.endswith("/data.pkl") and n.count("/") == 1 for n in archive.namelist())
        with open(path, "rb") as f:
            head = f.read(64)
    except (OSError, zipfile.BadZipFile):
        return False
    return head.startswith(b"\x80") and pickle.dumps(MAGIC_NUMBER, protocol=2)[2:-1] in head[:32]


STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


def unwrap_state_dict(checkpoint: Mapping[str, Any], strip_prefix: str = "module.") -> dict[str, np.ndarray]:
    """The state dict inside a loaded checkpoint, ready for ``load_state_dict``.

    Takes ``checkpoint["state_dict"]`` (or ``"model_state_dict"``, ``"model"``) when the weights are wrapped
    with training metadata (``{"state_dict": ..., "best_prec1": ...}``), and drops ``strip_prefix`` from the
    keys when every key has it (``module.`` is what ``nn.DataParallel`` adds).
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"unwrap_state_dict: expected a dict from load_torch, got {type(checkpoint).__name__}")
    state: Mapping[str, Any] = checkpoint
    for key in STATE_DICT_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            state = checkpoint[key]
            break
    not_arrays = [k for k, v in state.items() if not isinstance(v, np.ndarray)]
    if not_arrays:
        raise ValueError(f"unwrap_state_dict: not a state dict: {not_arrays[:5]} are not arrays "
                         f"(top-level keys: {list(checkpoint)[:8]})")
    if strip_prefix and state and all(isinstance(k, str) and k.startswith(strip_prefix) for k in state):
        return {k[len(strip_prefix):]: v for k, v in state.items()}
    return dict(state)


__all__ = ["TorchFileError", "UnsafeTorchPickleError", "is_torch_file", "load_torch", "unwrap_state_dict"]
