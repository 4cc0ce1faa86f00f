"""minires.distributed.cores: each local rank's share of the cores (one process; the 2-rank run is in
test_distributed_mpi.py)."""

from __future__ import annotations

import os

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from minires.distributed import cores
from minires.ops import _parallel, _procs


@pytest.fixture
def clean_threads(monkeypatch: pytest.MonkeyPatch):
    for name in ("MINIRES_NUM_THREADS", "MINIRES_PROCESSES", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = {lib["filepath"]: lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}
    yield
    monkeypatch.delenv("MINIRES_NUM_THREADS", raising=False)
    monkeypatch.delenv("MINIRES_PROCESSES", raising=False)
    threadpool_limits(limits=max(before.values(), default=1), user_api="blas")


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.mark.parametrize("machine_cores, local_ranks, share", [(8, 2, 4), (8, 3, 2), (2, 4, 1), (16, 16, 1)])
def test_each_rank_gets_its_share(clean_threads, monkeypatch, machine_cores, local_ranks, share):
    monkeypatch.setattr(cores, "available_cores", lambda: machine_cores)
    assert cores.share_cores(local_ranks) == share
    assert _parallel.threads() == share  # the chunk pool reads MINIRES_NUM_THREADS
    assert _procs.processes() == share  # the worker processes read MINIRES_PROCESSES
    assert _blas_threads() and set(_blas_threads()) == {share}


def test_one_rank_changes_nothing(clean_threads):
    before = _blas_threads()
    assert cores.share_cores(1) is None
    assert "MINIRES_NUM_THREADS" not in os.environ and "MINIRES_PROCESSES" not in os.environ and _blas_threads() == before


def test_the_users_settings_are_kept(clean_threads, monkeypatch):
    monkeypatch.setattr(cores, "available_cores", lambda: 8)
    threadpool_limits(limits=3, user_api="blas")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user chose BLAS threads: only the pool is set
    assert cores.share_cores(2) == 4
    assert _parallel.threads() == 4 and set(_blas_threads()) == {3}
    monkeypatch.setenv("MINIRES_NUM_THREADS", "1")  # and the pool too: nothing is set
    assert cores.share_cores(2) == 4
    assert _parallel.threads() == 1 and set(_blas_threads()) == {3}
