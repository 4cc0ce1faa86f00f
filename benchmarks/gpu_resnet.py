"""Images/s of one SGD training step on the GPU for ResNet-18 (CIFAR stem) and ResNet-20 (He et al.'s CIFAR
net), 32x32 inputs, 10 classes, minires vs PyTorch (same GPU, cuDNN), float32 and mixed precision (float16
autocast + GradScaler), with peak GPU memory.

    python benchmarks/gpu_resnet.py [--models resnet18 resnet20] [--batches 256 512] [--steps 20] [--warmup 3]
                                    [--no-torch] [--tf32] [--json PATH]

Without a CUDA device (or CuPy) it prints why and exits 0. Synthetic data (random images and labels):
the timing does not depend on the pixel values. Issue 7's goal: float32 >= 0.5x PyTorch's throughput.
``--json`` also writes the rows (``python -m minires.cuda.check`` reads them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

MODELS = ("resnet18", "resnet20")


def _minires_step_rate(model_name: str, batch: int, mixed: bool, steps: int, warmup: int) -> tuple[float, float]:
    """(images/s, peak GPU MiB) of minires training steps."""
    import cupy
    import numpy as np

    import minires as mr
    import minires.nn.functional as F
    from minires import amp, optim
    from minires.models import resnet18, resnet20

    mr.manual_seed(0)
    model = (resnet18(num_classes=10, stem="cifar") if model_name == "resnet18" else resnet20(num_classes=10)).to("cuda")
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scaler = amp.GradScaler(enabled=mixed)
    x = mr.tensor(np.random.default_rng(0).normal(size=(batch, 3, 32, 32)).astype(np.float32), device="cuda")
    y = mr.tensor(np.random.default_rng(1).integers(0, 10, batch), device="cuda")
    pool = cupy.get_default_memory_pool()

    def step() -> None:
        opt.zero_grad()
        with amp.autocast(enabled=mixed):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        step()
    mr.cuda.synchronize()
    pool.free_all_blocks()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    mr.cuda.synchronize()
    seconds = time.perf_counter() - start
    # CuPy's pool keeps what it has allocated: total_bytes() after the run is its high-water mark
    return batch * steps / seconds, pool.total_bytes() / 2**20


def _torch_step_rate(model_name: str, batch: int, mixed: bool, steps: int, warmup: int) -> tuple[float, float] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    import torch.nn as tnn
    from conv_layers import torch_resnet18_cifar, torch_resnet20  # benchmarks/ is on sys.path when this script runs

    torch.backends.cudnn.benchmark = True
    model = (torch_resnet18_cifar(torch) if model_name == "resnet18" else torch_resnet20(torch)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=mixed)
    x = torch.randn(batch, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (batch,), device="cuda")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=mixed):
            loss = tnn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return batch * steps / seconds, torch.cuda.max_memory_allocated() / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["resnet18"])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch side")
    parser.add_argument("--tf32", action="store_true", help="TF32 GEMMs for minires (torch: allow_tf32 to match)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    import minires as mr

    if not mr.cuda.is_available():
        print("gpu_resnet: no CUDA device (or CuPy is not installed); nothing to measure. "
              "Run this on a GPU machine with pip install 'minires[cuda12]'.")
        return 0
    import cupy

    mr.cuda.set_tf32(args.tf32)
    if not args.no_torch:
        try:
            import torch

            torch.backends.cuda.matmul.allow_tf32 = args.tf32
            torch.backends.cudnn.allow_tf32 = args.tf32
        except ImportError:
            pass
    print(f"GPU: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}  CuPy {cupy.__version__}  "
          f"TF32 {'on' if args.tf32 else 'off'}  synthetic CIFAR-shaped data (ResNet-18 with the CIFAR stem)")
    header = (f"{'model':>8} {'batch':>5} {'precision':>9} | {'minires img/s':>13} {'peak MiB':>9} | "
              f"{'torch img/s':>11} {'peak MiB':>9} | {'ratio':>6}")
    print(header)
    print("-" * len(header))
    rows = []
    for model in args.models:
        for batch in args.batches:
            for mixed in (False, True):
                ours, ours_mem = _minires_step_rate(model, batch, mixed, args.steps, args.warmup)
                theirs: Any = None if args.no_torch else _torch_step_rate(model, batch, mixed, args.steps, args.warmup)
                label = "amp fp16" if mixed else "float32"
                if theirs is None:
                    print(f"{model:>8} {batch:>5} {label:>9} | {ours:>13.0f} {ours_mem:>9.0f} | {'n/a':>11} {'n/a':>9} | {'n/a':>6}")
                else:
                    print(f"{model:>8} {batch:>5} {label:>9} | {ours:>13.0f} {ours_mem:>9.0f} | {theirs[0]:>11.0f} "
                          f"{theirs[1]:>9.0f} | {ours / theirs[0]:>6.2f}")
                rows.append({"model": model, "batch": batch, "precision": label, "minires_img_s": ours, "minires_peak_mib": ours_mem,
                             "torch_img_s": theirs and theirs[0], "torch_peak_mib": theirs and theirs[1],
                             "ratio": theirs and ours / theirs[0]})
                cupy.get_default_memory_pool().free_all_blocks()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
