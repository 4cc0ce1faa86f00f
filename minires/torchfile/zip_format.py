"""The zip format of ``torch.save`` (PyTorch >= 1.6): one archive folder ``<name>/`` holding

- ``data.pkl``: the object, pickled with persistent ids ``('storage', storage_type, key, location, numel)``;
- ``data/<key>``: each storage's raw bytes (``numel`` elements), stored uncompressed;
- ``byteorder`` ("little" or "big", PyTorch >= 2.1; files without it are little-endian), ``version`` or
  ``.data/version`` (the archive format), and bookkeeping records minires does not need.

TorchScript archives (``torch.jit.save``: ``constants.pkl``, ``code/``) hold code and are refused.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

from minires.torchfile.errors import TorchFileError
from minires.torchfile.tensors import materialize
from minires.torchfile.unpickler import TorchUnpickler


def _archive_folder(names: list[str]) -> str:
    """The ``<name>/`` prefix of the records (the file's stem when it was saved)."""
    if any(n.endswith("/constants.pkl") for n in names) or any("/code/" in n for n in names):
        raise TorchFileError("a TorchScript archive (torch.jit.save) holds code, which minires never runs; "
                             "save the weights with torch.save(model.state_dict(), path) instead")
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise TorchFileError(f"a zip archive with {len(pickles)} '<archive>/data.pkl' records, not a torch.save file "
                             f"(records: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''})")
    return pickles[0][: -len("data.pkl")]


def read_zip(path: str) -> Any:
    """The object saved in the zip-format file ``path``, with tensors as NumPy arrays."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        folder = _archive_folder(names)
        byteorder = "little"
        if folder + "byteorder" in names:
            byteorder = archive.read(folder + "byteorder").decode("ascii", errors="replace").strip()
            if byteorder not in ("little", "big"):
                raise TorchFileError(f"unknown byte order {byteorder!r} (expected 'little' or 'big')")
        for record in (folder + ".data/version", folder + "version"):
            if record in names and not archive.read(record).strip().isdigit():
                raise TorchFileError(f"the {record!r} record is not a version number")
        unpickler = TorchUnpickler(io.BytesIO(archive.read(folder + "data.pkl")))
        obj = unpickler.load()
        raw: dict[str, bytes] = {}
        for key, ref in unpickler.storages.items():
            record = f"{folder}data/{key}"
            if record not in names:
                raise TorchFileError(f"the pickle names storage {key!r} but the archive has no record {record!r}")
            raw[key] = archive.read(record)
            if len(raw[key]) != ref.nbytes:
                raise TorchFileError(f"storage {key!r} should hold {ref.numel} {ref.dtype} values ({ref.nbytes} bytes), "
                                     f"its record has {len(raw[key])} bytes")
    return materialize(obj, raw, byteorder)
