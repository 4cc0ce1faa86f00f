"""The loop of a worker process of :mod:`minires.ops._procs`: map the shared segments, run kernels, reply.

Started as ``python -c "from minires.ops._procworker import main; main()" <parent pid>`` with its stdin and
stdout as the pipes to the parent. It runs only kernels registered with :func:`minires.ops._procs.kernel`
in minires' own modules, and stops when the parent closes the pipe (the parent exiting included).
"""

from __future__ import annotations

import importlib
import mmap
import os
import sys
import traceback
from typing import Any

import numpy as np

from minires.ops import _procs
from minires.ops._malloc import keep_freed_memory


class _Maps:
    def __init__(self, parent: int) -> None:
        self.parent = parent
        self.maps: list[mmap.mmap] = []

    def attach(self, first: int, segments: list[list[int]]) -> None:
        for i, (fd, size) in enumerate(segments, start=first):
            if i != len(self.maps):
                raise RuntimeError(f"shared memory: segment {i} announced out of order")
            handle = os.open(f"/proc/{self.parent}/fd/{fd}", os.O_RDWR)
            try:
                self.maps.append(mmap.mmap(handle, size))
            finally:
                os.close(handle)

    def decode(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "array" in value:
            seg, offset, shape, strides, dtype = value["array"]
            return np.ndarray(tuple(shape), np.dtype(dtype), buffer=self.maps[seg], offset=offset, strides=tuple(strides))
        if "tuple" in value:
            return tuple(self.decode(v) for v in value["tuple"])
        if "window" in value:
            from minires.ops.geometry import Window2d

            return Window2d(**{k: self.decode(v) for k, v in value["window"].items()})
        raise ValueError(f"shared memory: unknown value {sorted(value)}")


def _lookup(name: str) -> Any:
    module = name.partition(":")[0]
    if not module.startswith("minires."):
        raise ValueError(f"shared memory: kernel {name!r} is not minires' own")
    importlib.import_module(module)
    if name not in _procs.KERNELS:
        raise ValueError(f"shared memory: {name!r} is not a registered kernel")
    return _procs.KERNELS[name]


def main() -> None:
    parent = int(sys.argv[1])
    inp, out = sys.stdin.buffer.fileno(), sys.stdout.buffer.fileno()
    sys.stdout = sys.stderr  # a stray print must not corrupt the replies
    keep_freed_memory()
    maps = _Maps(parent)
    _procs.send(out, {"ready": True})
    while True:
        try:
            _procs.wait_readable(inp, _procs.SPIN_SECONDS)
            message = _procs.receive(inp)
        except EOFError:
            return
        try:
            if "segments" in message:
                maps.attach(message["first_segment"], message["segments"])
            fn = _lookup(message["kernel"])
            a, b, part = message["rows"]
            fn(a, b, part, *maps.decode(message["args"]))
            reply: dict[str, Any] = {"done": True}
        except Exception:  # noqa: BLE001 - every failure goes back to the parent, which computes the slice itself
            reply = {"error": traceback.format_exc(limit=6)}
        _procs.send(out, reply)


if __name__ == "__main__":  # pragma: no cover
    main()
