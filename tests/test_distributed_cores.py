"""minires.distributed.cores: each local rank's share of the cores (one process; the 2-rank run is in
test_distributed_mpi.py)."""

from __future__ import annotations

import os

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from minires.distributed import cores
from minires.ops import _parallel


@pytest.fixture
def clean_threads(monkeypatch: pytest.MonkeyPatch):
    for name in ("MINIRES_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = {lib["filepath"]: lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}
    yield
    monkeypatch.delenv("MINIRES_NUM_THREADS", raising=False)
    threadpool_limits(limits=max(before.values(), default=1), user_api="blas")


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.mark.parametrize("machine_cores, local_ranks, share", [(8, 2, 4), (8, 3, 2), (2, 4, 1), (16, 16, 1)])
def test_each_rank_gets_its_share(clean_threads, monkeypatch, machine_cores, local_ranks, share):
    monkeypatch.setattr(cores, "available_cores", lambda: machine_cores)
    assert cores.share_cores(local_ranks) == share
    assert _parallel.threads() == share  # the chunk pool reads MINIRES_NUM_THREADS
    assert _blas_threads() and set(_blas_threads()) == {share}


def test_one_rank_or_a_user_setting_is_left_alone(clean_threads, monkeypatch):
    assert cores.share_cores(1) is None
    assert "MINIRES_NUM_THREADS" not in os.environ
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cores.share_cores(2) is None
    assert "MINIRES_NUM_THREADS" not in os.environ
