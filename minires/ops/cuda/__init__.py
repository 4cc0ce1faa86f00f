"""Fast GPU kernels (explicit CUDA source run through CuPy), each tested against the generic op it replaces.

Layout: :mod:`~minires.ops.cuda.sources` holds the CUDA C++ text, :mod:`~minires.ops.cuda.launch`
compiles it (NVRTC through ``cupy.RawModule``) and launches it on arrays, :mod:`~minires.ops.cuda.selfcheck`
compares each kernel with the generic path the first time it runs for a dtype. Nothing here imports
CuPy at import time.

Ops ask :func:`use_fast_kernels` before they dispatch: true only for arrays on a device with a kernel
launcher ("cuda"), in a dtype with kernels (float16/32/64), while fast kernels are enabled
(``MINIRES_FAST_KERNELS=0`` or :func:`set_fast_kernels` turns them off, leaving the generic code as the
reference path), and once that kernel family has passed its first-use self-check for the dtype.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from minires.backend import device_of
from minires.ops.cuda.launch import has_launcher
from minires.ops.cuda.sources import DTYPES

_enabled = os.environ.get("MINIRES_FAST_KERNELS", "1") != "0"
_KERNEL_DTYPES = frozenset(name for name, *_ in DTYPES)


def fast_kernels_enabled() -> bool:
    """Whether ops use the fast kernels for arrays on a GPU."""
    return _enabled


def set_fast_kernels(enabled: bool) -> None:
    """Switch the fast kernels on or off (off: the generic array-module code runs on the GPU too)."""
    global _enabled
    _enabled = bool(enabled)


@contextlib.contextmanager
def fast_kernels_off() -> Iterator[None]:
    """Run a block on the generic path (the reference), restoring the switch afterwards."""
    before = _enabled
    set_fast_kernels(False)
    try:
        yield
    finally:
        set_fast_kernels(before)


def use_fast_kernels(array: Any, family: str) -> bool:
    """True when ``family``'s fast kernel should run on ``array`` (see the module docstring for the rule).

    The first call for a (family, dtype, device) runs that kernel's self-check, which may switch it off.
    """
    if not _enabled or not has_launcher(array) or np.dtype(array.dtype).name not in _KERNEL_DTYPES:
        return False
    from minires.ops.cuda import selfcheck

    return selfcheck.passed(family, array.dtype, device_of(array))


__all__ = ["fast_kernels_enabled", "fast_kernels_off", "set_fast_kernels", "use_fast_kernels"]
