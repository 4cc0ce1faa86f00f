"""Forward+backward time of every distinct conv shape of ResNet-18 (CIFAR stem) and a whole training step.

Run:  .venv/bin/python benchmarks/conv_layers.py [--batch 64] [--repeats 5] [--skip-layers] [--skip-step]

Each conv shape (3x3 stride-1 stem, no max pool, 32x32 input) is timed forward+backward in float32
at the given batch; the figure is the median of ``--repeats`` runs after one warm-up. With PyTorch
installed the same shapes are timed in the same process and the ratio ``torch time / minires time``
is printed (1.0 = as fast as PyTorch; higher is better for minires). minires and torch runs are
separated by a short pause so neither library's spinning worker threads steal the other's cores.
The training step (forward, cross-entropy, backward, SGD step) of ``minires.models.resnet18(
num_classes=10, stem="cifar")`` reports images/s and peak memory (tracemalloc, a separate step);
torch's same network, built inline below, is timed side by side when importable.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from typing import Any, Callable

import numpy as np

import minires as mr
from minires.ops.conv import conv2d

# (name, in_channels, out_channels, input size, kernel, stride); padding is kernel // 2
SHAPES = [
    ("stem 3->64 32x32", 3, 64, 32, 3, 1),
    ("64->64 32x32", 64, 64, 32, 3, 1),
    ("64->128 s2", 64, 128, 32, 3, 2),
    ("128->128 16x16", 128, 128, 16, 3, 1),
    ("64->128 1x1 s2", 64, 128, 32, 1, 2),
    ("128->256 s2", 128, 256, 16, 3, 2),
    ("256->256 8x8", 256, 256, 8, 3, 1),
    ("128->256 1x1 s2", 128, 256, 16, 1, 2),
    ("256->512 s2", 256, 512, 8, 3, 2),
    ("512->512 4x4", 512, 512, 4, 3, 1),
    ("256->512 1x1 s2", 256, 512, 8, 1, 2),
]
# how many times each shape runs in one ResNet-18 CIFAR forward pass
COUNT_IN_RESNET18 = [1, 4, 1, 3, 1, 1, 3, 1, 1, 3, 1]
PAUSE = 0.3  # seconds between minires and torch runs


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn`` in ms, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def try_torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


def _conv_step(conv: Callable[..., Any], x: Any, w: Any, g: Any, stride: int, padding: int) -> Callable[[], None]:
    """One forward+backward of ``conv`` (minires' or torch's) on fixed tensors."""

    def run() -> None:
        x.grad = w.grad = None
        conv(x, w, stride=stride, padding=padding).backward(g)

    return run


def bench_layers(batch: int, repeats: int, torch: Any) -> None:
    print(f"conv2d forward+backward, float32, batch {batch}, median of {repeats} (ms)")
    header = f"{'layer':<18} {'minires':>9}"
    if torch is not None:
        header += f" {'torch':>9} {'torch/minires':>14}"
    print(header)
    rng = np.random.default_rng(0)
    total_mr = total_torch = 0.0
    for (name, cin, cout, size, k, s), count in zip(SHAPES, COUNT_IN_RESNET18):
        x = rng.standard_normal((batch, cin, size, size)).astype(np.float32)
        w = (rng.standard_normal((cout, cin, k, k)) * 0.1).astype(np.float32)
        xt, wt = mr.tensor(x, requires_grad=True), mr.tensor(w, requires_grad=True)
        out_shape = conv2d(xt, wt, stride=s, padding=k // 2).shape
        g = rng.standard_normal(out_shape).astype(np.float32)
        gt = mr.tensor(g)

        t_mr = median_ms(_conv_step(conv2d, xt, wt, gt, s, k // 2), repeats)
        total_mr += count * t_mr
        line = f"{name:<18} {t_mr:9.1f}"
        if torch is not None:
            time.sleep(PAUSE)
            tx, tw, tg = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True), torch.tensor(g)
            t_torch = median_ms(_conv_step(torch.nn.functional.conv2d, tx, tw, tg, s, k // 2), repeats)
            total_torch += count * t_torch
            line += f" {t_torch:9.1f} {t_torch / t_mr:14.2f}"
            time.sleep(PAUSE)
        print(line)
    summary = f"{'all 20 convs':<18} {total_mr:9.1f}"
    if torch is not None:
        summary += f" {total_torch:9.1f} {total_torch / total_mr:14.2f}"
    print(summary + "   (each shape weighted by its count in ResNet-18)")


def torch_resnet20(torch: Any, num_classes: int = 10) -> Any:
    """He et al.'s ResNet-20 for CIFAR with option-A shortcuts (subsample + zero channels), built inline."""
    tnn = torch.nn

    class Block(tnn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.stride, self.extra = stride, cout - cin

        def forward(self, x: Any) -> Any:
            identity = x
            if self.stride != 1 or self.extra:
                identity = tnn.functional.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra))
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + identity)

    layers: list[Any] = [tnn.Conv2d(3, 16, 3, 1, 1, bias=False), tnn.BatchNorm2d(16), tnn.ReLU(inplace=True)]
    cin = 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1), Block(cout, cout, 1)]
        cin = cout
    layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(64, num_classes)]
    return tnn.Sequential(*layers)


def torch_resnet18_cifar(torch: Any, num_classes: int = 10) -> Any:
    """torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max pool), built inline."""
    nn = torch.nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x: Any) -> Any:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def bench_step(batch: int, repeats: int, torch: Any) -> None:
    print(f"\nResNet-18 (CIFAR stem) training step, float32, batch {batch}, median of {repeats}")
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, batch)
    try:
        import minires.nn.functional as F
        from minires.models import resnet18
        from minires.optim import SGD
    except ImportError as exc:
        print(f"minires: skipped, the model/optimizer is not importable yet ({exc})")
    else:
        model = resnet18(num_classes=10, stem="cifar")
        model.train()
        opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
        x, y = mr.tensor(images), mr.tensor(labels)

        def step() -> None:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

        t = median_ms(step, repeats)
        tracemalloc.start()
        step()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"minires: {t:8.1f} ms/step  {batch / t * 1e3:6.1f} images/s  peak traced memory {peak / 2**20:7.0f} MiB")
        if torch is not None:
            time.sleep(PAUSE)
    if torch is None:
        print("torch: not installed, no comparison")
        return
    tmodel = torch_resnet18_cifar(torch)
    tmodel.train()
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.01, momentum=0.9)
    tx, ty = torch.tensor(images), torch.tensor(labels)

    def torch_step() -> None:
        topt.zero_grad()
        torch.nn.functional.cross_entropy(tmodel(tx), ty).backward()
        topt.step()

    tt = median_ms(torch_step, repeats)
    print(f"torch:   {tt:8.1f} ms/step  {batch / tt * 1e3:6.1f} images/s")
    if "t" in locals():
        print(f"minires throughput / torch throughput: {tt / t:.2f}  (issue 3's target: >= 0.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-layers", action="store_true", help="skip the per-layer table")
    parser.add_argument("--skip-step", action="store_true", help="skip the whole training step")
    parser.add_argument("--no-torch", action="store_true", help="do not compare with PyTorch even if installed")
    args = parser.parse_args()
    torch = None if args.no_torch else try_torch()
    if torch is not None:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; numpy {np.__version__}")
    if not args.skip_layers:
        bench_layers(args.batch, args.repeats, torch)
    if not args.skip_step:
        bench_step(args.batch, args.repeats, torch)


if __name__ == "__main__":
    main()
