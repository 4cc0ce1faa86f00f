"""minires' global random generator: one numpy Generator, reseeded by :func:`manual_seed`.

Random numbers are always drawn on the host and moved to the device, so a seed gives the same
values on the CPU and the GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed the global generator (parameter init, randn/rand, dropout, shuffling)."""
    global _generator
    _generator = np.random.default_rng(int(seed))
    return _generator


def generator() -> np.random.Generator:
    """The global generator (for code that needs random numbers consistent with ``manual_seed``)."""
    return _generator


def get_rng_state() -> dict[str, Any]:
    """A JSON-friendly snapshot of the global generator's state (for exact resume)."""
    return _generator.bit_generator.state


def set_rng_state(state: dict[str, Any]) -> None:
    _generator.bit_generator.state = state
