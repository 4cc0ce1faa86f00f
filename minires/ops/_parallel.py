"""Cache-sized batch chunks, optionally shared over the CPU cores, with BLAS kept single-threaded meanwhile.

The convolution kernels (im2col, col2im, Winograd's transforms and GEMMs) work on one chunk of the
batch at a time so the chunk's temporaries stay in the L2/L3 cache; a thread pool with one worker per
core runs the chunks side by side when ``MINIRES_NUM_THREADS`` asks for it (numpy releases the GIL in
copies, ufunc loops and BLAS calls; by default the chunks run one after another in the calling thread).
A chunk that calls BLAS must not start BLAS threads of its own on top of the pool's: :func:`over_batch`
limits BLAS to one thread for the whole call (once per call, not per chunk: entering the limit costs
a few microseconds, but BLAS re-spinning its threads on every switch cost more than it saved).

On one core, for small work (under :data:`MIN_PARALLEL_BYTES`) and inside a chunk, the same chunks run one
after another in the calling thread; on cupy the work is one call over the whole batch.

What the pool can and cannot do: numpy gives the GIL back inside each call, but a thread must take it
again between calls, and with calls of tens of microseconds that hand-over costs about as much as the
call. Two threads running the same Winograd convolution on two halves of a batch do 1.35x the work of
one; two *processes* do 2x (``benchmarks/numpy_threads.py``). So on a multi-core CPU the batch of the big
kernels goes to worker processes instead (:mod:`minires.ops._procs`, on by default); inside each process's
slice, these chunks run one after another.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np

_pool: tuple[int, ThreadPoolExecutor] | None = None  # (owning pid, pool)
_blas: Any = None  # threadpoolctl's controller, built once (listing the BLAS libraries takes ~0.5 ms)
_worker = threading.local()  # .busy is True in a pool thread while it runs a chunk


def threads() -> int:
    """Worker threads for the chunks: ``MINIRES_NUM_THREADS`` if set, else 1 (the chunks run in the calling
    thread and BLAS keeps all its threads for the GEMMs inside them).

    One is the default because the pool did not pay on the 2-core development machine: a ResNet-20
    training step took 653-691 ms with one thread against 735-794 ms with a thread per core (ResNet-18:
    a tie within noise), since numpy's calls hand the GIL back and forth between the pool's threads (see
    the module docstring). ``MINIRES_NUM_THREADS=N`` turns the pool on with N threads.
    """
    setting = os.environ.get("MINIRES_NUM_THREADS", "").strip()
    if setting:
        if not setting.isdigit() or int(setting) < 1:
            raise ValueError(f"MINIRES_NUM_THREADS must be a positive integer, got {setting!r}")
        return int(setting)
    return 1


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS limited to one thread inside the block (a no-op without threadpoolctl)."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn, a dependency
            _blas = False
        else:
            _blas = ThreadpoolController()
    if _blas is False:
        yield
        return
    with _blas.limit(limits=1, user_api="blas"):
        yield


# Below this much work (n * sample_bytes) one call runs its chunks in the calling thread: handing chunks
# to the pool costs ~150-250 us a call (waking the workers, the GIL going back and forth), more than
# the second core saves on small layers (measured: im2col of a 64x16x8x8 batch 261 us on the pool,
# 125 us in one thread; the pool starts to pay from ~4-8 MB of padded input).
MIN_PARALLEL_BYTES = 4 << 20


def chunk_size(n: int, sample_bytes: int, target_bytes: int) -> int:
    """Samples per chunk: about ``target_bytes`` of work each, and at least one chunk per core."""
    return max(1, min(-(-n // threads()), target_bytes // max(sample_bytes, 1)))


def over_batch(
    xp: Any, n: int, sample_bytes: int, work: Callable[[int, int], Any], target_bytes: int, blas: bool = False
) -> list[Any]:
    """Run ``work(start, stop)`` over chunks of the batch axis and return the results in order.

    ``sample_bytes`` is the size of one sample's working set, ``target_bytes`` that of a chunk.
    ``blas=True`` says the work calls BLAS: it then runs single-threaded while the pool runs.
    """
    global _pool
    if xp is not np or n < 2:
        return [work(0, n)]
    workers = threads()
    step = chunk_size(n, sample_bytes, target_bytes)
    starts = range(0, n, step)
    if workers < 2 or n * sample_bytes < MIN_PARALLEL_BYTES or getattr(_worker, "busy", False):
        # one core, little work, or called from inside a chunk: the same cache-sized chunks, one after
        # another in this thread (a nested pool.map could deadlock)
        return [work(a, min(a + step, n)) for a in starts]
    if _pool is None or _pool[0] != os.getpid():  # a forked child inherits the pool but not its threads
        _pool = (os.getpid(), ThreadPoolExecutor(workers, thread_name_prefix="minires"))
    pool = _pool[1]

    def run(a: int) -> Any:
        _worker.busy = True
        try:
            return work(a, min(a + step, n))
        finally:
            _worker.busy = False

    if not blas:
        return list(pool.map(run, starts))
    with single_threaded_blas():
        return list(pool.map(run, starts))
