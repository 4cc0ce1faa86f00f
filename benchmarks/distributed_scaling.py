"""Data-parallel scaling of minires on MPI: measured (1 vs 2 ranks, this machine) and on paper (8 GPUs).

    python benchmarks/distributed_scaling.py [--batch 32] [--steps 6] [--warmup 2] [--ranks 1 2] [--local-bn]
                                             [--paper-only] [--gpus 8] [--tflops 15] [--latency-us 5]

Measured: ResNet-20 (SyncBatchNorm, or per-rank BatchNorm with ``--local-bn``; DistributedDataParallel;
SGD) on random 3x32x32 images, ``--batch`` images per rank (weak scaling, as ``minires-train`` under
mpiexec), each configuration launched with ``mpiexec -bind-to core -n N`` (MPICH's Hydra) and one BLAS
thread, so every rank computes on one core. Per step: the slowest rank's median time and the median time
inside ``sync_gradients`` (the gradient all-reduce, including any wait for the slower rank).
Efficiency = (N-rank img/s) / (N x 1-rank img/s).
Needs the "dist" extra (``pip install ".[dist]"``).

On paper: gradient bytes per step against compute per step for ResNet-20/56/18 on 8 GPUs, from the
parameter counts and the MACs of :func:`minires.models.summary.summary`, under the assumptions printed
with the table (change them with the flags).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def worker(batch: int, steps: int, warmup: int, sync_bn: bool, net: str = "resnet20") -> None:
    """One rank of the measured run; rank 0 prints one JSON line."""
    import numpy as np

    import minires as mr
    import minires.distributed as dist
    import minires.nn.functional as F
    from minires import optim
    from minires.models import resnet18, resnet20

    dist.init()
    rng = np.random.default_rng(dist.get_rank())
    x = mr.tensor(rng.normal(size=(batch, 3, 32, 32)).astype(np.float32))
    y = mr.tensor(rng.integers(0, 10, batch))
    model = resnet20() if net == "resnet20" else resnet18(num_classes=10, stem="cifar")
    model = dist.DistributedDataParallel(dist.convert_sync_batchnorm(model) if sync_bn else model)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    step_s, sync_s = [], []
    for i in range(warmup + steps):
        dist.barrier()
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        before_sync = time.perf_counter()
        model.sync_gradients()
        after_sync = time.perf_counter()
        opt.step()
        end = time.perf_counter()
        if i >= warmup:
            step_s.append(end - start)
            sync_s.append(after_sync - before_sync)
    mine = np.array([statistics.median(step_s), statistics.median(sync_s)])
    dist.all_reduce(mine, "max")  # the slowest rank sets the pace
    if dist.get_rank() == 0:
        print(json.dumps({"ranks": dist.get_world_size(), "step_s": mine[0], "sync_s": mine[1],
                          "img_s": dist.get_world_size() * batch / mine[0]}))  # fmt: skip


def run_ranks(ranks: int, batch: int, steps: int, warmup: int, sync_bn: bool = True, net: str = "resnet20") -> dict | str:
    """Launch ``ranks`` ranks of :func:`worker` (one core each) and return rank 0's figures, or why not (a string)."""
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        mpiexec = None
    if mpiexec is None:
        return 'needs mpi4py and mpiexec (pip install ".[dist]")'
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}  # fmt: skip
    # one core per rank: BLAS via OMP_NUM_THREADS, minires' chunk pool via the CPU affinity
    cmd = [mpiexec, "-bind-to", "core", "-n", str(ranks), sys.executable, __file__, "--worker", "--batch", str(batch),
           "--steps", str(steps), "--warmup", str(warmup), "--net", net] + ([] if sync_bn else ["--local-bn"])  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        return f"failed: {out.stderr[-500:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(ranks: list[int], batch: int, steps: int, warmup: int, sync_bn: bool) -> None:
    bn = "SyncBatchNorm" if sync_bn else "BatchNorm per rank"
    header = (f"measured: ResNet-20, 3x32x32, batch {batch} per rank, {bn} + DDP, one core per rank, "
              f"median of {steps} steps after {warmup}; {os.cpu_count()} CPU cores")  # fmt: skip
    base = None
    for n in ranks:
        r = run_ranks(n, batch, steps, warmup, sync_bn)
        if isinstance(r, str) and r.startswith("needs"):
            print(f"measured part skipped: {r}\n")
            return
        if header:
            print(header)
            print(f"{'ranks':>5} {'step ms':>9} {'allreduce ms':>13} {'img/s':>8} {'efficiency':>11}")
            header = ""
        if isinstance(r, str):
            print(f"{n:>5} {r}")
            continue
        base = r["img_s"] if n == 1 else base
        eff = "" if base is None else f"{r['img_s'] / (n * base):.0%}"
        print(f"{n:>5} {1e3 * r['step_s']:9.1f} {1e3 * r['sync_s']:13.2f} {r['img_s']:8.1f} {eff:>11}")
    print()


def paper(gpus: int, tflops: float, links: list[tuple[str, float]], latency_us: float) -> None:
    from minires.models import resnet18, resnet20, resnet56
    from minires.models.summary import summary
    from minires.nn.modules.batchnorm import _BatchNorm

    cases = [("ResNet-20", resnet20(), 32, 128), ("ResNet-56", resnet56(), 32, 128),
             ("ResNet-18 (CIFAR stem)", resnet18(num_classes=10, stem="cifar"), 32, 128),
             ("ResNet-18 (ImageNet)", resnet18(), 224, 64)]  # fmt: skip
    ring = 2 * (gpus - 1) / gpus
    print(f"on paper: {gpus} GPUs, float32 gradients (4 bytes/parameter), ring all-reduce moving {ring:.2f} x the "
          f"gradient bytes through each GPU's link, {2 * (gpus - 1)} x {latency_us:g} us latency per bucket (25 MB "
          f"buckets); training = 3 x forward MACs, 2 FLOPs per MAC, at a sustained {tflops:g} TFLOP/s per GPU; "
          "no overlap of communication with backward (overlap would hide up to all of it)")
    head = " | ".join(f"allreduce ms @ {name}" for name, _ in links)
    print(f"| model | input, batch/GPU | parameters | MB per step | GFLOP per step per GPU | compute ms | {head} | "
          "SyncBN all-reduces, ms |")
    print("|---|---|---|---|---|---|" + "---|" * len(links) + "---|")
    for name, model, size, batch in cases:
        params = sum(p.numel() for p in model.parameters())
        macs = summary(model, (1, 3, size, size), verbose=False).total_macs
        grad_bytes = 4 * params
        flops = 6 * macs * batch
        compute_ms = 1e3 * flops / (tflops * 1e12)
        buckets = -(-grad_bytes // (25 * 2**20))
        comm = [1e3 * (ring * grad_bytes / (gbps * 1e9)) + buckets * 2 * (gpus - 1) * latency_us / 1e3 for _, gbps in links]
        cells = " | ".join(f"{c:.2f} ({c / compute_ms:.0%})" for c in comm)
        bn_reduces = 3 * sum(isinstance(m, _BatchNorm) for m in model.modules())  # 2 forward + 1 backward each
        sync_ms = bn_reduces * 2 * (gpus - 1) * latency_us / 1e3  # tiny messages: latency only
        print(f"| {name} | {size}x{size}, {batch} | {params:,} | {grad_bytes / 1e6:.1f} | {flops / 1e9:.0f} | "
              f"{compute_ms:.1f} | {cells} | {bn_reduces} x: {sync_ms:.1f} |")
    print("(percentages: gradient all-reduce time / compute time per step; SyncBatchNorm's small all-reduces are\n"
          " latency-bound and sit on the critical path of forward and backward)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=32, help="images per rank per step")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--paper-only", action="store_true")
    p.add_argument("--local-bn", action="store_true", help="measure with per-rank BatchNorm instead of SyncBatchNorm")
    p.add_argument("--net", choices=["resnet20", "resnet18"], default="resnet20", help=argparse.SUPPRESS)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--tflops", type=float, default=15.0, help="assumed sustained training TFLOP/s per GPU")
    p.add_argument("--latency-us", type=float, default=5.0, help="assumed per-hop latency of the ring")
    args = p.parse_args()
    if args.worker:
        worker(args.batch, args.steps, args.warmup, not args.local_bn, args.net)
        return
    if not args.paper_only:
        measure(args.ranks, args.batch, args.steps, args.warmup, not args.local_bn)
    paper(args.gpus, args.tflops, [("NVLink 150 GB/s", 150.0), ("PCIe 4 20 GB/s", 20.0), ("25 GbE 3 GB/s", 3.0)],
          args.latency_us)


if __name__ == "__main__":
    main()
