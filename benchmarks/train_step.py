"""Full training step (forward, cross-entropy, backward, SGD) of ResNet-20 and ResNet-18, minires vs PyTorch.

Run (from the repository root)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=$PWD python benchmarks/train_step.py
    ... benchmarks/train_step.py --steps 9 --nets resnet20        # one net, more steps
    ... benchmarks/train_step.py --no-torch --no-breakdown        # minires only, plain timing
    ... benchmarks/train_step.py --threads 1                      # both frameworks on one thread

How the figures in README were taken: the command above (OpenBLAS left to pick its own kernel for the
CPU: the OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE overrides that some machines set make current numpy slower;
the kernel in use is printed from threadpoolctl), float32, on a 2-core machine, the load average printed.

Workloads: ``minires.models.resnet20()`` at batch 128 (He et al.'s CIFAR net, option-A shortcuts) and
``minires.models.resnet18(stem="cifar")`` at batch 64, on random 3x32x32 images, SGD with momentum 0.9
and weight decay 5e-4. PyTorch runs the same networks (built inline below and in ``conv_layers.py``)
with the same optimizer, in the same process. The two frameworks' steps *alternate* (minires, torch,
minires, ...) after warm-up, so a change of machine load hits both; the figure is the median.

Printed per net:

- ms/step, images/s and ``torch ms / minires ms`` (1.0 = as fast as PyTorch, higher is better for minires);
- achieved GFLOP/s of each framework (conv + linear multiply-adds of forward, input gradient and weight
  gradient, 2 FLOPs each) next to a float32 GEMM (numpy sgemm, 2048^3) measured in the same run;
- a per-op breakdown of one minires step (separate, instrumented steps: timers wrap every Function's
  forward/backward, and the convolution's input-gradient and weight-gradient kernels): conv forward /
  input grad / weight grad, BatchNorm, ReLU/add, other ops, optimizer, and the rest (engine: graph
  walk, gradient accumulation, Python glue);
- peak memory of one step: for minires the tracemalloc peak (numpy reports its buffers to tracemalloc),
  for both frameworks the growth of the resident set over the step (peak RSS after ``/proc/self/clear_refs``
  reset minus RSS before the step, after glibc's ``malloc_trim``; Linux only). torch's CPU allocations are
  invisible to tracemalloc, so the RSS delta is the like-for-like figure; it can undercount memory an
  allocator keeps and reuses from before the step.

minires runs as users get it: one worker process per extra core takes a share of the batch of every big
kernel (``minires.ops._procs``; ``MINIRES_PROCESSES=1`` keeps everything in this process), started before
the timed steps.

``--ranks N`` then also runs minires as N data-parallel MPI processes (``mpiexec``; SyncBatchNorm and
DistributedDataParallel, the same global batch split over the ranks, one core each) and
prints its step time against the in-process PyTorch step: NumPy's passes scale over processes, not over the
threads of one process (``benchmarks/numpy_threads.py``), so this is how minires uses a multi-core CPU best.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import sys
import time
import tracemalloc
from collections import defaultdict
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conv_layers import torch_resnet18_cifar, torch_resnet20, try_torch  # noqa: E402

import minires as mr  # noqa: E402
import minires.nn as nn  # noqa: E402
import minires.nn.functional as F  # noqa: E402
from minires.autograd.function import Function  # noqa: E402
from minires.models import resnet18, resnet20  # noqa: E402
from minires.ops import _procs  # noqa: E402
from minires.optim import SGD  # noqa: E402

NETS = {"resnet20": 128, "resnet18": 64}  # net -> batch size


# ---------------------------------------------------------------- steps


def minires_step(net: str, images: np.ndarray, labels: np.ndarray) -> tuple[Callable[[], None], Any, Any]:
    """A closure running one minires training step, its model and its optimizer."""
    model = resnet20() if net == "resnet20" else resnet18(num_classes=10, stem="cifar")
    model.train()
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = mr.tensor(images), mr.tensor(labels)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step, model, opt


def torch_step(torch: Any, net: str, images: np.ndarray, labels: np.ndarray) -> Callable[[], None]:
    model = torch_resnet20(torch) if net == "resnet20" else torch_resnet18_cifar(torch)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = torch.tensor(images), torch.tensor(labels)

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------- FLOPs and GEMM peak


def step_flops(model: Any, images: np.ndarray) -> float:
    """Multiply-add FLOPs of one training step's conv and linear layers (forward + input grad + weight grad).

    Forward hooks record each layer's output size; backward costs twice the forward (input and weight
    gradients), less the first conv's input gradient, which nobody needs.
    """
    forward: list[float] = []

    def hook(module: Any, inputs: Any, out: Any) -> None:
        if isinstance(module, nn.Conv2d):
            o, cg, kh, kw = module.weight.shape
            forward.append(2.0 * out.numel() * cg * kh * kw)
        else:
            forward.append(2.0 * out.numel() * module.weight.shape[1])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with mr.no_grad():
        model(mr.tensor(images))
    for h in handles:
        h.remove()
    return 3 * sum(forward) - forward[0]


def sgemm_gflops(repeats: int = 5, n: int = 2048) -> float:
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.T.copy()
    a @ b
    return 2 * n**3 / statistics.median(timed(lambda: a @ b) for _ in range(repeats)) / 1e9


# ---------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    """Hand glibc's free heap back to the OS, so memory freed by earlier steps is not silently reused."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_delta_mib(step: Callable[[], None]) -> float | None:
    """Peak RSS growth over one call of ``step`` (MiB), by resetting the kernel's high-water mark; Linux only."""
    gc.collect()
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    before = _status_kib("VmRSS")
    step()
    peak = _status_kib("VmHWM")
    return None if before is None or peak is None else (peak - before) / 1024


def shared_mib() -> float:
    """Shared memory minires' worker processes and this one hold (:mod:`minires.ops._procs`: arrays the
    kernels allocate there are invisible to tracemalloc; the blocks are cached, so this is their peak)."""
    arena = _procs._arena
    return 0.0 if arena is None else sum(seg.used for seg in arena.segments) / 2**20  # handed out (pages past it are untouched)


def tracemalloc_peak_mib(step: Callable[[], None]) -> float:
    gc.collect()
    tracemalloc.start()
    step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


# ---------------------------------------------------------------- per-op breakdown

CATEGORIES = ["conv forward", "conv input grad", "conv weight grad", "BatchNorm", "ReLU/add", "other ops", "optimizer", "engine+glue"]
# Kernels inside the convolution's backward, timed on their own: (module, function name, category).
# A name that is absent (another version of the code) is skipped.
CONV_PROBES = [
    ("minires.ops.conv", "input_grad_from", "conv input grad"),
    ("minires.ops.conv", "weight_grad_from", "conv weight grad"),
    ("minires.ops.winograd", "conv3x3_input_grad", "conv input grad"),
    ("minires.ops.winograd", "conv3x3_weight_grad", "conv weight grad"),
]


def _category(cls: type) -> str:
    name = cls.__name__.lower()
    if "conv" in name:
        return "conv"
    if "batchnorm" in name or "batch_norm" in name or "bnrelu" in name:
        return "BatchNorm"
    if name in ("relu", "add", "reluadd", "addrelu") or "relu" in name:
        return "ReLU/add"
    return "other ops"


def _all_functions() -> list[type]:
    seen, todo = [], list(Function.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return seen


class Breakdown:
    """Timers around every Function's forward/backward and the conv backward kernels, on while entered."""

    def __init__(self) -> None:
        self.times: dict[str, float] = defaultdict(float)
        self._undo: list[tuple[Any, str, Any]] = []
        self._depth = 0

    def _timer(self, fn: Callable[..., Any], category: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0 or category.startswith("conv "):
                    self.times[category] += time.perf_counter() - start

        return wrapper

    def _wrap(self, owner: Any, name: str, category: str, static: bool) -> None:
        original = owner.__dict__[name] if static else getattr(owner, name)
        fn = original.__func__ if isinstance(original, staticmethod) else original
        wrapped = self._timer(fn, category)
        setattr(owner, name, staticmethod(wrapped) if static else wrapped)
        self._undo.append((owner, name, original))

    def __enter__(self) -> Breakdown:
        import importlib

        for cls in _all_functions():
            cat = _category(cls)
            for phase in ("forward", "backward"):
                if phase in cls.__dict__:
                    label = ("conv forward" if phase == "forward" else "conv backward") if cat == "conv" else cat
                    self._wrap(cls, phase, label, static=True)
        for module_name, fn_name, cat in CONV_PROBES:
            module = importlib.import_module(module_name)
            if hasattr(module, fn_name):
                self._wrap(module, fn_name, cat, static=False)
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)

    def report(self, step_seconds: float, opt_seconds: float) -> dict[str, float]:
        t = dict(self.times)
        backward = t.pop("conv backward", 0.0)
        probed = t.get("conv input grad", 0.0) + t.get("conv weight grad", 0.0)
        if backward > probed and probed == 0.0:
            t["conv input grad"] = backward  # unsplit: all of the conv backward
        elif backward > probed:
            t["conv weight grad"] = t.get("conv weight grad", 0.0) + (backward - probed)  # glue around the kernels
        t["optimizer"] = opt_seconds
        t["engine+glue"] = step_seconds - sum(t.values())
        return t


def breakdown(step_parts: tuple[Callable[[], Any], Callable[[], Any], Callable[[], Any]], steps: int) -> dict[str, float]:
    """Median per-category seconds of ``steps`` instrumented steps (zero_grad+forward+backward, then opt.step)."""
    zero_grad, forward_backward, opt_step = step_parts
    runs: list[dict[str, float]] = []
    for _ in range(steps):
        with Breakdown() as b:
            zero_grad()
            t_fb = timed(forward_backward)
            t_opt = timed(opt_step)
            runs.append(b.report(t_fb + t_opt, t_opt))
    return {c: statistics.median(r.get(c, 0.0) for r in runs) for c in CATEGORIES}


# ---------------------------------------------------------------- main


def _speed(seconds: float, batch: int, flops: float, gemm: float) -> str:
    gflops = flops / seconds / 1e9
    return f"{1e3 * seconds:8.1f} ms/step {batch / seconds:7.1f} img/s {gflops:6.1f} GFLOP/s ({gflops / gemm:.0%} of sgemm)"


def bench(net: str, steps: int, warmup: int, torch: Any, gemm: float, with_breakdown: bool) -> dict[str, Any]:
    batch = NETS[net]
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, batch)
    mr.manual_seed(0)
    mr_step, model, opt = minires_step(net, images, labels)
    flops = step_flops(model, images)
    t_step = None if torch is None else torch_step(torch, net, images, labels)
    for _ in range(warmup):
        mr_step()
        if t_step is not None:
            t_step()
    mr_times, torch_times = [], []
    for _ in range(steps):
        mr_times.append(timed(mr_step))
        if t_step is not None:
            torch_times.append(timed(t_step))
    t_mr = statistics.median(mr_times)
    print(f"\n{net}, batch {batch}, float32, {flops / 1e9:.2f} GFLOP per step, median of {steps} alternating steps")
    print(f"  minires: {_speed(t_mr, batch, flops, gemm)}")
    result: dict[str, Any] = {"net": net, "minires_ms": 1e3 * t_mr}
    if t_step is not None:
        t_t = statistics.median(torch_times)
        print(f"  torch:   {_speed(t_t, batch, flops, gemm)}")
        per_step = ", ".join(f"{b / a:.2f}" for a, b in zip(mr_times, torch_times))
        print(f"  minires / torch throughput: {t_t / t_mr:.2f}   (per-step ratios: {per_step})")
        result["ratio"] = t_t / t_mr
        result["torch_ms"] = 1e3 * t_t
    if with_breakdown:

        def zero_grad() -> None:
            opt.zero_grad()

        def fb() -> None:
            F.cross_entropy(model(mr.tensor(images)), mr.tensor(labels)).backward()

        parts = breakdown((zero_grad, fb, opt.step), max(3, steps // 2))
        total = sum(parts.values())
        print("  minires per-op breakdown (instrumented steps, median ms; share of their sum):")
        for c in CATEGORIES:
            print(f"    {c:<18} {1e3 * parts[c]:8.1f} ms  {parts[c] / total:5.1%}")
    mr_trace = tracemalloc_peak_mib(mr_step)
    mr_rss = rss_delta_mib(mr_step)
    line = f"  peak memory of one step: minires {mr_trace:.0f} MiB (tracemalloc)"
    held = shared_mib()
    if held:
        line += f" + {held:.0f} MiB shared memory held"
    if mr_rss is not None:
        line += f", RSS growth {mr_rss:.0f} MiB"
    if t_step is not None:
        t_rss = rss_delta_mib(t_step)
        line += f"; torch RSS growth {t_rss:.0f} MiB" if t_rss is not None else "; torch: RSS not readable"
    print(line)
    return result


# ---------------------------------------------------------------- data-parallel ranks


def bench_ranks(net: str, ranks: int, steps: int, warmup: int, torch_ms: float | None) -> None:
    """The same global batch as ``ranks`` MPI processes, one core each (``distributed_scaling.run_ranks``:
    SyncBatchNorm + DDP), against the in-process PyTorch step measured just before: how fast minires
    trains when it uses the cores as processes."""
    from distributed_scaling import run_ranks

    batch = NETS[net]
    r = run_ranks(ranks, batch // ranks, steps, warmup, net=net)
    if isinstance(r, str):
        print(f"  data-parallel ranks: {r}")
        return
    line = (f"  minires, {ranks} ranks x 1 thread (mpiexec; SyncBatchNorm + DDP, {batch // ranks} images "
            f"per rank): {1e3 * r['step_s']:.1f} ms/step {batch / r['step_s']:.1f} img/s")  # fmt: skip
    if torch_ms is not None:
        line += f"; / torch in-process: {torch_ms / (1e3 * r['step_s']):.2f}"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="+", choices=sorted(NETS), default=["resnet20", "resnet18"])
    parser.add_argument("--steps", type=int, default=7, help="timed steps per framework (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-torch", action="store_true", help="do not compare with PyTorch even if installed")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the instrumented per-op steps")
    parser.add_argument(
        "--threads", type=int, help="threads for both frameworks (torch, BLAS, minires' pool); a steadier ratio on a busy machine"
    )
    parser.add_argument(
        "--ranks", type=int, default=0, help="also time minires as N data-parallel MPI processes (mpiexec) on the same global batch"
    )
    args = parser.parse_args()
    torch = None if args.no_torch else try_torch()
    if args.threads:
        os.environ["MINIRES_NUM_THREADS"] = str(args.threads)
        os.environ["MINIRES_PROCESSES"] = str(args.threads)
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)  # for the rest of the run
        if torch is not None:
            torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(f"{i['internal_api']} {i.get('architecture', '?')} {i['num_threads']} threads" for i in threadpool_info())
    except ImportError:
        blas = "threadpoolctl not installed"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"numpy {np.__version__} ({blas}); load average {load:.2f}; {os.cpu_count()} CPUs")
    print(" ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")))
    try:
        from minires.backends import describe_conv_algorithm
    except ImportError:  # a version of minires with im2col only
        print("conv algorithm: im2col")
    else:
        print(f"conv algorithm: {describe_conv_algorithm()}")
    if torch is not None:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    gemm = sgemm_gflops()
    print(f"numpy sgemm 2048^3: {gemm:.0f} GFLOP/s")
    workers = _procs.start()  # started now, not inside the timed steps (and after the sgemm: BLAS then runs one thread)
    setting = os.environ.get("MINIRES_PROCESSES", "(unset)")
    print(f"minires processes: {1 + workers} (this one + {workers} workers; MINIRES_PROCESSES={setting})")
    for net in args.nets:
        result = bench(net, args.steps, args.warmup, torch, gemm, not args.no_breakdown)
        if args.ranks > 1:
            bench_ranks(net, args.ranks, args.steps, args.warmup, result.get("torch_ms"))


if __name__ == "__main__":
    main()
