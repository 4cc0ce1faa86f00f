"""The legacy format of ``torch.save`` (before PyTorch 1.6; ``_use_new_zipfile_serialization=False`` today).

One stream of five pickles, then raw bytes:

1. the magic number ``0x1950a86a20f9469cfc6c``;
2. the protocol version ``1001``;
3. system information (``{"protocol_version", "little_endian", "type_sizes"}``);
4. the object, with persistent ids ``('storage', storage_type, key, location, numel, view_metadata)``;
5. the sorted list of storage keys;

then, for each key of that list in order, the storage's element count as a little-endian int64 and its
``numel * element_size`` bytes. PyTorch writes the storages little-endian whatever the machine.
"""

from __future__ import annotations

import io
from typing import Any

from minires.torchfile.errors import TorchFileError, UnsafeTorchPickleError
from minires.torchfile.tensors import materialize
from minires.torchfile.unpickler import DataUnpickler, TorchUnpickler

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


def read_legacy(path: str) -> Any:
    """The object saved in the legacy-format file ``path``, with tensors as NumPy arrays."""
    with open(path, "rb") as f:
        data = f.read()
    stream = io.BytesIO(data)
    try:
        magic = DataUnpickler(stream).load()
    except UnsafeTorchPickleError:
        raise
    except Exception:  # noqa: BLE001 - any failure here means "not this format"
        magic = None
    if magic != MAGIC_NUMBER:
        raise TorchFileError("not a PyTorch file: it is neither a zip archive nor starts with torch.save's magic number")
    version = DataUnpickler(stream).load()
    if version != PROTOCOL_VERSION:
        raise TorchFileError(f"unknown legacy protocol version {version!r} (expected {PROTOCOL_VERSION})")
    if not isinstance(DataUnpickler(stream).load(), dict):
        raise TorchFileError("the system-information header is not a dict")
    unpickler = TorchUnpickler(stream)
    obj = unpickler.load()
    keys = DataUnpickler(stream).load()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise TorchFileError(f"the storage key list is not a list of strings: {keys!r:.80}")
    view, pos = memoryview(data), stream.tell()
    raw: dict[str, memoryview] = {}
    for key in keys:
        ref = unpickler.storages.get(key)
        if ref is None:
            raise TorchFileError(f"the storage list names {key!r}, which no tensor in the pickle uses")
        if pos + 8 > len(data):
            raise TorchFileError(f"the file ends before storage {key!r} (truncated)")
        count = int.from_bytes(view[pos : pos + 8], "little", signed=True)
        if count != ref.numel:
            raise TorchFileError(f"storage {key!r} should hold {ref.numel} {ref.dtype} values, its header says {count}")
        pos += 8
        if pos + ref.nbytes > len(data):
            raise TorchFileError(f"storage {key!r} needs {ref.nbytes} bytes, the file ends {len(data) - pos} bytes later (truncated)")
        raw[key] = view[pos : pos + ref.nbytes]
        pos += ref.nbytes
    missing = sorted(set(unpickler.storages) - set(raw))
    if missing:
        raise TorchFileError(f"the pickle uses storages {missing} that the file does not contain")
    return materialize(obj, raw, "little")
