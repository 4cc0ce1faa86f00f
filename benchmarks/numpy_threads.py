"""How far NumPy's memory-bound passes scale over the cores: threads (one process) against processes.

Run (from the repository root)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/numpy_threads.py
    ... benchmarks/numpy_threads.py --workers 4

Each worker adds two float32 arrays into a third, over and over (``np.add(a, b, out=o)``: 3 arrays
moved per call), for array sizes from L2-resident (256 KB) to DRAM-sized (64 MB). Printed: the
bandwidth of one worker alone, then of ``--workers`` workers at once, as threads of one process (how
minires' chunk pool runs) and as separate processes.

Why it matters: minires' BatchNorm, ReLU, residual adds and Winograd transforms are such passes. NumPy
releases the GIL inside each call, but a thread must take it back between calls; with short calls
(tens of microseconds on cache-sized chunks) the hand-over costs about as much as the call, so the
threads take turns instead of running side by side. Separate processes have no such lock. On the
2-core development machine (three runs, other jobs niced in the background): 256 KB arrays (calls of a few
microseconds), 2 threads 0.93-1.13x one worker, 2 processes 1.70x; 4 MB arrays (calls of ~150 us), threads
and processes both ~1.45x; 64 MB arrays, 1.1-2.0x (noisy). PyTorch's CPU kernels run their loops in OpenMP
threads without the GIL, so they scale where minires' NumPy passes on cache-sized chunks do not: this is
most of the gap between the 1-thread ratio of the training-step benchmark and its 2-thread ratio.
The same holds for a whole Winograd convolution (64x16x32x32, one BLAS thread): one process 7.1 ms; two
processes at once 6.5 and 7.3 ms each (2x the work per second); two threads at once 10.9 and 9.9 ms each
(1.35x). Hence ``mpiexec -n <cores>`` (data-parallel ranks, one thread each) is how minires uses a
multi-core CPU best.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import threading
import time
from typing import Any

import numpy as np

SIZES = [(1 << 16, 20000), (1 << 20, 1000), (1 << 24, 40)]  # (float32 elements, calls): 256 KB, 4 MB, 64 MB


def _adds(size: int, calls: int, start: Any, results: Any, index: int) -> None:
    a, b = np.ones(size, np.float32), np.ones(size, np.float32)
    out = np.empty_like(a)
    np.add(a, b, out=out)  # touch the pages before timing
    start.wait()
    t = time.perf_counter()
    for _ in range(calls):
        np.add(a, b, out=out)
    results[index] = 3 * a.nbytes * calls / (time.perf_counter() - t) / 1e9


def bandwidth(size: int, calls: int, workers: int, processes: bool) -> list[float]:
    """GB/s of each of ``workers`` workers adding arrays of ``size`` float32 at the same time."""
    if processes:
        ctx = mp.get_context("fork")
        start, results = ctx.Barrier(workers), ctx.Array("d", workers)
        runners: list[Any] = [ctx.Process(target=_adds, args=(size, calls, start, results, i)) for i in range(workers)]
    else:
        start, results = threading.Barrier(workers), [0.0] * workers
        runners = [threading.Thread(target=_adds, args=(size, calls, start, results, i)) for i in range(workers)]
    for r in runners:
        r.start()
    for r in runners:
        r.join()
    return list(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"numpy {np.__version__}; np.add(a, b, out=o) on float32 arrays; GB/s counts the 3 arrays moved per call")
    for size, calls in SIZES:
        one = bandwidth(size, calls, 1, processes=False)[0]
        line = f"{size * 4 >> 10:6d} KB arrays: 1 worker {one:6.1f} GB/s"
        for processes in (False, True):
            each = bandwidth(size, calls, args.workers, processes)
            kind = "processes" if processes else "threads"
            line += f" | {args.workers} {kind} {sum(each):6.1f} GB/s ({sum(each) / one:4.2f}x)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
