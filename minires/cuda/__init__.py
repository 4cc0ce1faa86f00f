"""``minires.cuda``: is a GPU usable, and small CUDA helpers."""

from __future__ import annotations

from minires.backend import cuda_is_available


def is_available() -> bool:
    """True when CuPy is installed and sees a CUDA device."""
    return cuda_is_available()


def synchronize() -> None:
    """Wait for queued GPU work to finish (for honest timings); a no-op without a GPU."""
    if cuda_is_available():
        from minires.backend import get_xp

        get_xp("cuda").cuda.get_current_stream().synchronize()


def set_tf32(enabled: bool) -> None:
    """Let float32 GEMMs (cupy.matmul -> cuBLAS) use TF32 tensor cores (Ampere and later): faster, with
    a 10-bit mantissa in the products. Off by default. UNVERIFIED on a GPU.

    Sets ``CUPY_TF32`` (read by CuPy when it picks a GEMM compute type) and, where CuPy exposes it,
    the float32 compute type directly (``cupy._core._routines_linalg.set_compute_type``).
    """
    import os

    os.environ["CUPY_TF32"] = "1" if enabled else "0"
    global _tf32
    _tf32 = bool(enabled)
    if cuda_is_available():
        try:
            import numpy as np
            from cupy._core import _routines_linalg as linalg  # private: guarded

            mode = linalg.COMPUTE_TYPE_TF32 if enabled else linalg.COMPUTE_TYPE_DEFAULT
            linalg.set_compute_type(np.float32, mode)
        except (ImportError, AttributeError):  # pragma: no cover - older/newer CuPy: the env var alone
            pass


def tf32_enabled() -> bool:
    """Whether :func:`set_tf32` turned TF32 on."""
    return _tf32


_tf32 = False

__all__ = ["is_available", "set_tf32", "synchronize", "tf32_enabled"]
