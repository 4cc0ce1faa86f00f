"""Whether the kernel checks' toolchains (NVRTC, g++) are here: skip without them, except in CI.

CI sets ``MINIRES_REQUIRE_KERNEL_CHECKS=1`` (see .ci/run, which installs cupy-cuda12x and
nvidia-cuda-nvrtc-cu12): there a missing toolchain fails the test instead of skipping it, so the kernel
checks can never silently stop running.
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRED = os.environ.get("MINIRES_REQUIRE_KERNEL_CHECKS") == "1"


def _missing(what: str) -> None:
    message = f"{what} (needed to check the CUDA kernels without a GPU)"
    if REQUIRED:
        pytest.fail(f"MINIRES_REQUIRE_KERNEL_CHECKS=1 but {message}", pytrace=False)
    pytest.skip(message)


def require_nvrtc() -> None:
    """Skip (or fail in CI) unless CuPy imports and NVRTC loads."""
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # ImportError, or the NVRTC library missing
        _missing(f"NVRTC is not available ({type(exc).__name__}: {exc}); pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12")


def require_host_compiler() -> None:
    """Skip (or fail in CI) unless g++ (or $CXX) is on the PATH."""
    from cuda_host import CXX

    if shutil.which(CXX) is None:
        _missing(f"the C++ compiler {CXX!r} is not on the PATH")
