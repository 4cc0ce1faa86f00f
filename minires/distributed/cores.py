"""Each rank's share of the machine's cores, so N ranks on one machine do not run N x cores threads.

On the CPU, minires computes with two kinds of threads: BLAS's (numpy's GEMMs) and its own chunk pool
(:mod:`minires.ops._parallel`). Both default to every core the process may run on. Under ``mpiexec -n N``
on one machine that is N times too many: the ranks' threads then fight for the cores. :func:`share_cores`
gives each of the N local ranks ``cores // N`` threads of each kind (at least one), unless the user chose
already (``MINIRES_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` or ``OMP_NUM_THREADS`` set, or ``mpiexec -bind-to
core``, which leaves each rank one core in its affinity mask anyway).

Several single-threaded processes are also the way minires uses a multi-core CPU best: NumPy's
memory-bound passes scale over processes but hardly over threads (``benchmarks/numpy_threads.py``).
"""

from __future__ import annotations

import os

_USER_SETTINGS = ("MINIRES_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


def available_cores() -> int:
    """The cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def share_cores(local_ranks: int) -> int | None:
    """Limit this process to its share of the cores when ``local_ranks`` ranks share the machine.

    Returns the threads per rank it set, or None when it left the settings alone (one local rank, or
    a thread count the user set). Sets ``MINIRES_NUM_THREADS`` (the chunk pool) and BLAS's thread count
    (through threadpoolctl, for the whole process: this process is one rank of a group).
    """
    if local_ranks <= 1 or any(os.environ.get(name, "").strip() for name in _USER_SETTINGS):
        return None
    per_rank = max(1, available_cores() // local_ranks)
    os.environ["MINIRES_NUM_THREADS"] = str(per_rank)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn, a dependency
        return per_rank
    threadpool_limits(limits=per_rank, user_api="blas")
    return per_rank
