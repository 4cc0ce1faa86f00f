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


__all__ = ["is_available", "synchronize"]
