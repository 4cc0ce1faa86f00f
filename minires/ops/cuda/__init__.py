"""GPU-only fused kernels (CuPy), each tested against the generic array-module op it replaces.

Nothing here imports CuPy at import time; the kernels compile on first use. Ops dispatch here only
for arrays on the "cuda" device and while :func:`fast_kernels_enabled` (``MINIRES_FAST_KERNELS=0``
or :func:`set_fast_kernels` turns them off, leaving the generic code as the reference path).

UNVERIFIED: written without access to a GPU; see tests/test_cuda_kernels.py, which compares each
kernel with its generic reference and is skipped where there is no CUDA device.
"""

from __future__ import annotations

import os
from typing import Any

from minires import backend

_enabled = os.environ.get("MINIRES_FAST_KERNELS", "1") != "0"


def fast_kernels_enabled() -> bool:
    """Whether ops use the fused CuPy kernels for cuda arrays."""
    return _enabled


def set_fast_kernels(enabled: bool) -> None:
    """Switch the fused CuPy kernels on or off (off: the generic array-module code runs on the GPU too)."""
    global _enabled
    _enabled = bool(enabled)


def use_fast_kernels(array: Any) -> bool:
    """True for an array on the "cuda" device while fast kernels are enabled (never for numpy or the test device)."""
    if not _enabled:
        return False
    try:
        return backend.device_of(array) == "cuda"
    except TypeError:
        return False


__all__ = ["fast_kernels_enabled", "set_fast_kernels", "use_fast_kernels"]
