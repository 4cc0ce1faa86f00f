"""A test-side writer of PyTorch checkpoint files, independent of PyTorch and of minires' reader.

It assembles the pickles opcode by opcode (protocol 2, as ``torch.save`` writes them) so the tests can
build exactly the files they need -- a typed storage, an offset view, a big-endian zip, a hostile global --
without PyTorch installed. Values: None, bool, int, float, str, tuple, list, dict, plus
:class:`Global` (``module.name``), :class:`Call` (``func(*args)``), :class:`Build` (``obj.__setstate__``)
and :class:`Tensor` (a ``torch._utils._rebuild_tensor_v2`` call over a persistent-id storage).
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


@dataclass(frozen=True)
class Global:
    module: str
    name: str


@dataclass(frozen=True)
class Call:
    func: Any
    args: tuple = ()


@dataclass(frozen=True)
class Build:
    obj: Any
    state: Any


@dataclass(frozen=True)
class PersistentId:
    pid: tuple


@dataclass
class Storage:
    """``numel`` elements of class ``storage_class`` (e.g. "FloatStorage") with raw bytes ``data``."""

    key: str
    storage_class: str
    numel: int
    data: bytes
    module: str = "torch"

    def pid(self, legacy: bool) -> PersistentId:
        base = ("storage", Global(self.module, self.storage_class), self.key, "cpu", self.numel)
        return PersistentId(base + (None,) if legacy else base)


@dataclass
class Tensor:
    storage: Storage
    offset: int
    size: tuple
    stride: tuple
    extra: tuple = field(default_factory=tuple)  # e.g. (dtype Global,) for _rebuild_tensor_v3
    func: str = "_rebuild_tensor_v2"


@dataclass
class OrderedDict:
    """``collections.OrderedDict(items)`` as torch pickles a state dict: REDUCE, SETITEMS, then BUILD of
    its ``_metadata`` attribute."""

    items: dict


class _Writer:
    def __init__(self, legacy: bool) -> None:
        self.out = io.BytesIO()
        self.legacy = legacy

    def emit(self, v: Any) -> None:
        w = self.out.write
        if isinstance(v, OrderedDict):
            self.emit(Call(Global("collections", "OrderedDict"), ()))
            w(b"(")
            for k, x in v.items.items():
                self.emit(k)
                self.emit(x)
            w(b"u")
            self.emit({"_metadata": {"": {"version": 1}}})
            w(b"b")
        elif v is None:
            w(b"N")
        elif v is True or v is False:
            w(b"\x88" if v else b"\x89")
        elif isinstance(v, int):
            n = (v.bit_length() + 8) // 8
            w(b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True))
        elif isinstance(v, float):
            w(b"G" + struct.pack(">d", v))
        elif isinstance(v, str):
            data = v.encode("utf-8")
            w(b"X" + struct.pack("<I", len(data)) + data)
        elif isinstance(v, bytes):  # as protocol 2 pickles bytes: _codecs.encode(latin-1 text, "latin1")
            self.emit(Call(Global("_codecs", "encode"), (v.decode("latin1"), "latin1")))
        elif isinstance(v, tuple):
            w(b"(")
            for x in v:
                self.emit(x)
            w(b"t")
        elif isinstance(v, list):
            w(b"](")
            for x in v:
                self.emit(x)
            w(b"e")
        elif isinstance(v, dict):
            w(b"}(")
            for k, x in v.items():
                self.emit(k)
                self.emit(x)
            w(b"u")
        elif isinstance(v, Global):
            w(b"c" + v.module.encode() + b"\n" + v.name.encode() + b"\n")
        elif isinstance(v, Call):
            self.emit(v.func)
            self.emit(tuple(v.args))
            w(b"R")
        elif isinstance(v, Build):
            self.emit(v.obj)
            self.emit(v.state)
            w(b"b")
        elif isinstance(v, PersistentId):
            self.emit(v.pid)
            w(b"Q")
        elif isinstance(v, Tensor):
            hooks = Call(Global("collections", "OrderedDict"), ())
            args = (v.storage.pid(self.legacy), v.offset, v.size, v.stride, False, hooks) + v.extra
            self.emit(Call(Global("torch._utils", v.func), args))
        else:
            raise TypeError(f"writer: cannot emit {type(v).__name__}")


def dumps(obj: Any, legacy: bool = False) -> bytes:
    """``obj`` as a protocol-2 pickle with torch's persistent ids."""
    writer = _Writer(legacy)
    writer.out.write(b"\x80\x02")
    writer.emit(obj)
    writer.out.write(b".")
    return writer.out.getvalue()


def write_zip(path: Path, pickled: bytes, storages: list[Storage], byteorder: str | None = "little", folder: str = "archive") -> Path:
    """The zip layout: ``folder/data.pkl``, ``folder/byteorder``, ``folder/data/<key>``, ``folder/version``."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(f"{folder}/data.pkl", pickled)
        if byteorder is not None:
            z.writestr(f"{folder}/byteorder", byteorder)
        for s in storages:
            z.writestr(f"{folder}/data/{s.key}", s.data)
        z.writestr(f"{folder}/version", "3\n")
    return path


def write_legacy(path: Path, pickled: bytes, storages: list[Storage]) -> Path:
    """The legacy stream: magic, protocol version, system info, object, key list, then (count, bytes) per key."""
    head = b"".join(pickle.dumps(x, protocol=2) for x in (
        MAGIC_NUMBER, PROTOCOL_VERSION, {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                                         "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    keys = sorted(s.key for s in storages)
    by_key = {s.key: s for s in storages}
    tail = b"".join(struct.pack("<q", by_key[k].numel) + by_key[k].data for k in keys)
    path.write_bytes(head + pickled + pickle.dumps(keys, protocol=2) + tail)
    return path
