"""What a gradient of a gradient costs: a ResNet-20 training step with and without a gradient penalty.

Three timings per library (median of ``--repeats`` after a warm-up), float32, CIFAR-shaped input:

- ``step``: forward, cross-entropy, backward (first order: the raw-array path);
- ``penalty step``: the same loss plus ``lambda * mean_i |dCE_i/dx_i|^2``: ``autograd.grad(...,
  create_graph=True)`` then one backward through the forward *and* the backward graph (double
  backward through every conv, BatchNorm, ReLU, residual add, pool and the loss);
- ``input hvp``: one Hessian-vector product of the loss with respect to the input images.

With PyTorch importable the same network (built inline) is timed in the same process and
``torch time / minires time`` is printed (1.0: as fast as PyTorch). Figures, never assertions.

    python benchmarks/double_backward.py [--batch 16] [--repeats 5] [--no-torch]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import numpy as np

import minires as mr
import minires.nn.functional as F
from minires.autograd import functional as AF
from minires.models import resnet20


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def minires_timings(images: np.ndarray, labels: np.ndarray, lam: float, repeats: int) -> dict[str, float]:
    mr.manual_seed(0)
    model = resnet20().train()
    y = mr.tensor(labels)

    def loss_of(x: mr.Tensor) -> mr.Tensor:
        return F.cross_entropy(model(x), y)

    def step() -> None:
        model.zero_grad()
        loss_of(mr.tensor(images)).backward()

    def penalty_step() -> None:
        model.zero_grad()
        x = mr.tensor(images, requires_grad=True)
        ce = loss_of(x)
        (gx,) = mr.autograd.grad(ce * len(images), x, create_graph=True)
        (ce + lam * (gx * gx).reshape(len(images), -1).sum(1).mean()).backward()

    v = mr.tensor(np.random.default_rng(1).standard_normal(images.shape).astype(np.float32))
    return {
        "step": median_time(step, repeats),
        "penalty step": median_time(penalty_step, repeats),
        "input hvp": median_time(lambda: AF.hvp(loss_of, mr.tensor(images), v), repeats),
    }


def torch_timings(images: np.ndarray, labels: np.ndarray, lam: float, repeats: int) -> dict[str, float]:
    import torch

    def block(cin: int, cout: int, stride: int) -> torch.nn.Module:
        class Block(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.c1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
                self.b1 = torch.nn.BatchNorm2d(cout)
                self.c2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
                self.b2 = torch.nn.BatchNorm2d(cout)
                self.pad = cout - cin

            def forward(self, x: Any) -> Any:
                out = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
                short = x if self.pad == 0 else torch.nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad // 2, self.pad // 2))
                return torch.relu(out + short)

        return Block()

    layers: list[Any] = [torch.nn.Conv2d(3, 16, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU()]
    for cin, cout, stride in ((16, 16, 1), (16, 32, 2), (32, 64, 2)):
        layers += [block(cin, cout, stride)] + [block(cout, cout, 1) for _ in range(2)]
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10)]
    model = torch.nn.Sequential(*layers).train()
    y = torch.tensor(labels)

    def step() -> None:
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.tensor(images)), y).backward()

    def penalty_step() -> None:
        model.zero_grad()
        x = torch.tensor(images, requires_grad=True)
        ce = torch.nn.functional.cross_entropy(model(x), y)
        (gx,) = torch.autograd.grad(ce * len(images), x, create_graph=True)
        (ce + lam * (gx * gx).reshape(len(images), -1).sum(1).mean()).backward()

    v = torch.tensor(np.random.default_rng(1).standard_normal(images.shape).astype(np.float32))
    loss_of = lambda x: torch.nn.functional.cross_entropy(model(x), y)  # noqa: E731
    return {
        "step": median_time(step, repeats),
        "penalty step": median_time(penalty_step, repeats),
        "input hvp": median_time(lambda: torch.autograd.functional.hvp(loss_of, torch.tensor(images), v), repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--penalty", type=float, default=1.0)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, args.batch)
    ours = minires_timings(images, labels, args.penalty, args.repeats)
    theirs: dict[str, float] = {}
    if not args.no_torch:
        try:
            theirs = torch_timings(images, labels, args.penalty, args.repeats)
        except ImportError:
            print("(PyTorch not installed: no comparison)")
    print(f"ResNet-20, batch {args.batch}, 32x32, float32, median of {args.repeats}")
    for name, t in ours.items():
        extra = f"   torch {theirs[name] * 1000:8.1f} ms   torch/minires {theirs[name] / t:5.2f}" if name in theirs else ""
        print(f"  {name:13s} minires {t * 1000:8.1f} ms   ({t / ours['step']:4.1f} x step){extra}")


if __name__ == "__main__":
    main()
