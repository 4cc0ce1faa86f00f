"""im2col vs Winograd, layer shape by layer shape: the measurements behind ``conv_algorithm="auto"``'s rule.

Run (from the repository root)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=$PWD python benchmarks/conv_algorithms.py
    ... benchmarks/conv_algorithms.py --batch 64 --rounds 9
    MINIRES_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 ... benchmarks/conv_algorithms.py   # one core

For every 3x3 stride-1 "same" convolution shape in the grid (batch N, C -> max(C, 16) channels, S x S
maps; the stems have 1 or 3 input channels and need no input gradient, as an image does not), one
forward + backward (input, weight and bias gradients) in float32 is timed with each algorithm forced.
The two alternate round by round, so a change of machine load hits both; the figure is the fastest
round (the least disturbed one), after a warm-up round. Printed per shape: both times, the ratio
``winograd / im2col`` (below 1: Winograd is faster), what :func:`minires.backends.choose_conv_algorithm`
picks under "auto", and whether that was the faster one. The last line counts how often the rule's
pick was the faster algorithm and how much time its wrong picks cost against the better choice.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import minires as mr
from minires import backends
from minires.ops.conv import conv2d


def shapes(batches: list[int]) -> list[tuple[int, int, int, int]]:
    """(N, C, O, S) for the grid, skipping activations over 20 MB (they take long and say nothing new)."""
    grid = []
    for n in batches:
        for s in (2, 4, 8, 16, 32):
            for c in (1, 3, 16, 32, 64, 128, 256, 512):
                if n * c * s * s * 4 <= 20e6:
                    grid.append((n, c, max(c, 16), s))
    return grid


def time_both(n: int, c: int, o: int, s: int, rounds: int) -> dict[str, float]:
    """Fastest forward + backward (ms) of each algorithm over ``rounds`` alternating rounds."""
    rng = np.random.default_rng(0)
    x = mr.tensor(rng.standard_normal((n, c, s, s), dtype=np.float32), requires_grad=c > 3)
    w = mr.tensor(0.1 * rng.standard_normal((o, c, 3, 3), dtype=np.float32), requires_grad=True)
    b = mr.tensor(np.zeros(o, np.float32), requires_grad=True)
    g = mr.tensor(rng.standard_normal((n, o, s, s), dtype=np.float32))
    times: dict[str, list[float]] = {"im2col": [], "winograd": []}
    for _ in range(rounds + 1):
        for algorithm, kept in times.items():
            with backends.use_conv_algorithm(algorithm):
                start = time.perf_counter()
                conv2d(x, w, b, padding=1).backward(g)
                kept.append(time.perf_counter() - start)
    return {algorithm: 1e3 * min(kept[1:]) for algorithm, kept in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"numpy {np.__version__}; {backends.describe_conv_algorithm()}")
    right = total = 0
    lost = best_total = 0.0
    for n, c, o, s in shapes(args.batch):
        t = time_both(n, c, o, s, args.rounds)
        pick = backends.choose_conv_algorithm(np, np.float32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, c, (s, s))
        faster = min(t, key=t.__getitem__)
        right += pick == faster
        total += 1
        lost += t[pick] - t[faster]
        best_total += t[faster]
        print(
            f"N={n:3d} C={c:3d} O={o:3d} {s:2d}x{s:<2d}  im2col {t['im2col']:8.2f} ms  winograd {t['winograd']:8.2f} ms  "
            f"ratio {t['winograd'] / t['im2col']:4.2f}  auto picks {pick:8s} {'ok' if pick == faster else 'SLOWER'}",
            flush=True,
        )
    print(f"auto picked the faster algorithm for {right} of {total} shapes; its other picks cost "
          f"{lost:.1f} ms over the {best_total:.1f} ms of always picking the faster one ({100 * lost / best_total:.1f}%)")


if __name__ == "__main__":
    main()
