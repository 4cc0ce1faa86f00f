"""Run the CUDA kernels of minires.ops.cuda.sources on the CPU: the same source, built with g++.

A small shim (:data:`SHIM`) makes CUDA C++ host C++: it defines ``__global__``/``__device__`` away,
declares ``blockIdx``/``threadIdx``/``blockDim``/``gridDim`` as globals, and converts float16 through
g++'s ``_Float16``. :func:`build` compiles shim + kernel source (+ optional test wrappers) into a shared
library, cached per test session in a temp folder (removed at exit) keyed by a hash of the text, and loads it
with ctypes. :class:`HostLauncher` runs a kernel's grid as two loops (blocks, then threads), one thread
after the other: faithful because every kernel is per-element (grid-stride loop, no shared memory,
no barriers, no atomics). A small grid (default 3 blocks of 5 threads) makes each thread stride.

Registered for the foreign test device (:func:`host_kernels`), it lets the library's real dispatch,
wrappers and self-check run end to end on the CPU.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

SHIM = r"""
// ---- host shim: CUDA's execution-space keywords and built-in indices for g++ --------------------
#define MINIRES_HOST_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
struct minires_dim3 { unsigned int x, y, z; };
static minires_dim3 blockIdx, threadIdx, blockDim, gridDim;

extern "C" void minires_host_set_thread(unsigned int block, unsigned int thread, unsigned int blocks, unsigned int threads) {
    blockIdx.x = block; threadIdx.x = thread; gridDim.x = blocks; blockDim.x = threads;
    blockIdx.y = blockIdx.z = threadIdx.y = threadIdx.z = 0;
    gridDim.y = gridDim.z = blockDim.y = blockDim.z = 1;
}
float minires_host_half_to_float(unsigned short bits) {
    _Float16 h;
    __builtin_memcpy(&h, &bits, 2);
    return (float)h;
}
unsigned short minires_host_float_to_half(float value) {
    _Float16 h = (_Float16)value;  // round to nearest even, as cvt.rn.f16.f32
    unsigned short bits;
    __builtin_memcpy(&bits, &h, 2);
    return bits;
}
"""

CXX = os.environ.get("CXX", "g++")
_BUILD_DIR: str | None = None
_LIBRARIES: dict[str, ctypes.CDLL] = {}


class HostBuildError(RuntimeError):
    """g++ rejected a kernel source; the message carries the compiler's output."""


def compiler_available() -> bool:
    return shutil.which(CXX) is not None


def build(source: str, wrappers: str = "") -> ctypes.CDLL:
    """Compile SHIM + source + wrappers to a shared library (cached by content hash) and load it."""
    global _BUILD_DIR
    text = SHIM + source + wrappers
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    if key in _LIBRARIES:
        return _LIBRARIES[key]
    if _BUILD_DIR is None:
        _BUILD_DIR = tempfile.mkdtemp(prefix="minires-cuda-host-")
        atexit.register(shutil.rmtree, _BUILD_DIR, ignore_errors=True)  # one build folder per test session
    path = os.path.join(_BUILD_DIR, f"kernels-{key}.so")
    if not os.path.exists(path):
        cmd = [CXX, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-x", "c++", "-", "-o", path]
        done = subprocess.run(cmd, input=text.encode(), capture_output=True)
        if done.returncode != 0:
            raise HostBuildError(f"g++ failed on the kernel source:\n{done.stderr.decode(errors='replace')}")
    library = ctypes.CDLL(path)
    _LIBRARIES[key] = library
    return library


def _raw(array: Any) -> np.ndarray:
    """The numpy buffer behind a kernel argument (a numpy array or a foreign-device array)."""
    raw = getattr(array, "_a", array)
    if not isinstance(raw, np.ndarray):
        raise TypeError(f"host launcher: expected an array, got {type(array).__name__}")
    return raw


def _c_argument(value: Any) -> Any:
    if isinstance(value, np.int64):
        return ctypes.c_longlong(int(value))
    if isinstance(value, np.int32):
        return ctypes.c_int(int(value))
    if isinstance(value, (bool, int, float)):
        raise TypeError(f"host launcher: pass numpy scalars (np.int64 / np.int32) so the C type is explicit, got {value!r}")
    return ctypes.c_void_p(_raw(value).ctypes.data)


class HostLauncher:
    """Runs ``family``'s entry point on the CPU over a ``blocks`` x ``threads`` grid.

    ``sources`` maps family -> source text (default: the library's own); tests swap in a broken one.
    """

    def __init__(self, blocks: int = 3, threads: int = 5, sources: dict[str, str] | None = None) -> None:
        from minires.ops.cuda.sources import KERNELS

        self.blocks, self.threads = blocks, threads
        self.sources = {family: src for family, (src, _) in KERNELS.items()} | (sources or {})
        self.launches: list[str] = []

    def __call__(self, family: str, entry: str, total: int, args: tuple[Any, ...]) -> None:
        library = build(self.sources[family])
        kernel = getattr(library, entry)
        kernel.restype = None
        c_args = [_c_argument(a) for a in args]
        for block in range(self.blocks):
            for thread in range(self.threads):
                library.minires_host_set_thread(block, thread, self.blocks, self.threads)
                kernel(*c_args)
        self.launches.append(entry)


@contextlib.contextmanager
def host_kernels(launcher: HostLauncher | None = None) -> Iterator[HostLauncher]:
    """Register the foreign test device with a host launcher, and clear the self-check memory around it."""
    from foreign_device import foreign_device

    from minires.ops.cuda import launch, selfcheck

    launcher = launcher or HostLauncher()
    with foreign_device() as name:
        launch.register_launcher(name, launcher)
        selfcheck.reset()
        try:
            yield launcher
        finally:
            launch.unregister_launcher(name)
            selfcheck.reset()
