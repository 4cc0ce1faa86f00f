"""Test configuration: hypothesis profiles and the device the suite runs on.

Profiles: "ci" (derandomized, no deadline: the same examples every run, so CI never flakes) is the
default; "dev" explores more examples with fresh randomness. Choose with HYPOTHESIS_PROFILE=dev.
The device comes from MINIRES_TEST_DEVICE ("cpu" by default, "cuda" on a GPU machine, "foreign" for
the pretend GPU of tests/foreign_device.py, whose arrays refuse implicit conversion to numpy as CuPy's do).

PyTorch is a test-only oracle: tests that compare with it skip where it is not installed, except when
MINIRES_REQUIRE_TORCH=1 (set by .ci/run, which installs it), where a missing torch stops the run at once.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=25,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TEST_DEVICE = os.environ.get("MINIRES_TEST_DEVICE", "cpu")

if os.environ.get("MINIRES_REQUIRE_TORCH") == "1":
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise pytest.UsageError(
            f"MINIRES_REQUIRE_TORCH=1 but PyTorch cannot be imported ({exc}); install the oracle with "
            "`pip install torch==2.13.0` (the CPU build), or unset MINIRES_REQUIRE_TORCH to let those tests skip"
        ) from exc

if TEST_DEVICE == "foreign":
    import foreign_device

    foreign_device.register()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "device: runs on MINIRES_TEST_DEVICE; `pytest -m device` is the GPU subset under =cuda")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that takes the ``device`` fixture belongs to the device subset (``-m device``)."""
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


@pytest.fixture
def device() -> str:
    """The device tests create tensors on (MINIRES_TEST_DEVICE, default "cpu")."""
    if TEST_DEVICE != "cpu":
        import minires as mr

        if TEST_DEVICE == "cuda" and not mr.cuda.is_available():
            pytest.skip("MINIRES_TEST_DEVICE=cuda but no CUDA device is available")
    return TEST_DEVICE


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same global seed."""
    import minires as mr

    mr.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="module")
def three_processes() -> Iterator[None]:
    """Two worker processes (minires.ops._procs) and this one, started and ready, for the whole module
    (MINIRES_PROCESSES=3, whatever the machine's cores); stopped after it."""
    from minires.ops import _procs

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINIRES_PROCESSES", "3")
        _procs.reset()
        assert _procs.start() == 2
        yield
    _procs.reset()
