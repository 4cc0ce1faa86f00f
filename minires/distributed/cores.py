"""Each rank's share of the machine's cores, so N ranks on one machine do not run N x cores threads.

On the CPU, minires computes with BLAS's threads (numpy's GEMMs), its own chunk pool
(:mod:`minires.ops._parallel`) and its worker processes (:mod:`minires.ops._procs`). BLAS and the
worker processes default to every core the process may run on. Under ``mpiexec -n N``
on one machine that is N times too many: the ranks' threads then fight for the cores. :func:`share_cores`
gives each of the N local ranks ``cores // N`` threads or processes (at least one) of each kind the user
has not set: the pool unless ``MINIRES_NUM_THREADS`` is set, the worker processes unless ``MINIRES_PROCESSES``
is (one: no workers), BLAS unless ``OPENBLAS_NUM_THREADS`` or ``OMP_NUM_THREADS`` is. (With
``mpiexec -bind-to core`` each rank's affinity mask holds one core, so each gets one of everything.)

Several single-threaded processes are also the way minires uses a multi-core CPU best: NumPy's
memory-bound passes scale over processes but hardly over threads (``benchmarks/numpy_threads.py``).
"""

from __future__ import annotations

import os

_BLAS_SETTINGS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


def available_cores() -> int:
    """The cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def share_cores(local_ranks: int) -> int | None:
    """Limit this process to its share of the cores when ``local_ranks`` ranks share the machine.

    Returns the threads per rank (None for a single local rank, where nothing changes). Sets
    ``MINIRES_NUM_THREADS`` (the chunk pool) and ``MINIRES_PROCESSES`` (the worker processes) unless set,
    and BLAS's thread count through threadpoolctl
    (for the whole process: this process is one rank of a group) unless a BLAS variable is set.
    """
    if local_ranks <= 1:
        return None
    per_rank = max(1, available_cores() // local_ranks)
    for name in ("MINIRES_NUM_THREADS", "MINIRES_PROCESSES"):
        if not os.environ.get(name, "").strip():
            os.environ[name] = str(per_rank)
    if not any(os.environ.get(name, "").strip() for name in _BLAS_SETTINGS):
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=per_rank, user_api="blas")
    return per_rank
