"""Second derivatives through a skip connection, and a gradient-penalty training step.

Part 1 — how the identity path appears in the curvature. Take a residual block's branch ``F``
(conv-BN-ReLU-conv-BN, a BasicBlock's, float64) and the squared loss ``L = 1/2 ||y - t||^2`` of

    residual:  y = F(x) + x        plain twin:  y = F(x)        (same weights)

With the residual's target shifted by x (so both leave the same residual ``r = y - t``), the
Hessians with respect to the block input differ only by the skip's Gauss-Newton terms:

    H_res v - H_plain v = v + J v + J^T v          (J = dF/dx)

The script computes ``H v`` for both with ``mr.autograd.functional.hvp`` (exact: double backward
through conv, BatchNorm in training mode and ReLU), ``J v`` with ``jvp`` and ``J^T v`` with
``vjp``, checks the identity, and prints the curvature ``<v, H v>`` along random directions:
the skip adds ``|v|^2 + 2 <v, J v>`` to it.

Part 2 — a gradient-penalty step ("double backpropagation", Drucker & LeCun 1992; the same
mechanism as WGAN-GP's penalty): train a small CNN on digits with
``loss = CE + lambda * mean_i |dCE_i/dx_i|^2``. The penalty's gradient flows through the input
gradient, i.e. through every op's backward, via ``mr.autograd.grad(..., create_graph=True)``.
The script trains a penalised and an unpenalised twin from the same start and reports the
input-gradient norm of each.

    python examples/curvature_through_skip.py [--quick] [--out runs/examples/curvature_through_skip]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

import minires as mr
import minires.nn as nn
import minires.nn.functional as F
from minires.autograd import functional as AF
from minires.data import load_digits
from minires.models import BasicBlock
from minires.optim import SGD


def curvature_through_skip(channels: int, size: int, batch: int, directions: int, seed: int) -> dict[str, Any]:
    """Part 1: H v of the residual block and of its plain twin; check H_res v - H_plain v = v + Jv + J^T v."""
    mr.manual_seed(seed)
    block = BasicBlock(channels, channels)
    for p in block.parameters():
        p.data = p.data.astype(np.float64)
    for name in ("bn1", "bn2"):  # non-trivial affine parameters, so the branch is not near-zero
        bn = getattr(block, name)
        bn.weight.data = 0.5 + np.random.default_rng(seed).random(channels)
        bn.bias.data = 0.1 * np.random.default_rng(seed + 1).standard_normal(channels)
    block.train()  # BatchNorm with batch statistics: the curvature includes the batch coupling
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal((batch, channels, size, size))
    target = mr.tensor(rng.standard_normal(x0.shape))
    x = mr.tensor(x0)

    def branch(a: mr.Tensor) -> mr.Tensor:
        return block.branch(a)

    def loss_residual(a: mr.Tensor) -> mr.Tensor:
        return 0.5 * ((branch(a) + a - (target + x)) ** 2).sum()  # target shifted by x: same residual

    def loss_plain(a: mr.Tensor) -> mr.Tensor:
        return 0.5 * ((branch(a) - target) ** 2).sum()

    rows = []
    worst = 0.0
    for k in range(directions):
        v = mr.tensor(rng.standard_normal(x0.shape))
        _, hv_res = AF.hvp(loss_residual, x, v)
        _, hv_plain = AF.hvp(loss_plain, x, v)
        _, jv = AF.jvp(branch, x, v)
        _, jtv = AF.vjp(branch, x, v)
        predicted = v.numpy() + jv.numpy() + jtv.numpy()
        difference = hv_res.numpy() - hv_plain.numpy()
        error = float(np.abs(difference - predicted).max() / np.abs(predicted).max())
        worst = max(worst, error)
        vv = float((v.numpy() ** 2).sum())
        row = {
            "direction": k,
            "vHv_residual": float((v.numpy() * hv_res.numpy()).sum()) / vv,
            "vHv_plain": float((v.numpy() * hv_plain.numpy()).sum()) / vv,
            "skip_term": (vv + 2 * float((v.numpy() * jv.numpy()).sum())) / vv,
        }
        rows.append(row)
        print(
            f"  direction {k}: <v,Hv>/|v|^2 residual {row['vHv_residual']:9.4f}  plain {row['vHv_plain']:9.4f}  "
            f"difference {row['vHv_residual'] - row['vHv_plain']:8.4f} = 1 + 2<v,Jv>/|v|^2 {row['skip_term']:8.4f}"
        )
    print(f"  max relative error of H_res v - H_plain v against v + Jv + J^T v: {worst:.2e}")
    return {"directions": rows, "identity_max_relative_error": worst}


class SmallNet(nn.Module):
    """conv(1->8, 3x3) - BN - ReLU - conv(8->8, 3x3, stride 2) - ReLU - global average - linear(8->10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: mr.Tensor) -> mr.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.conv2(h))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def input_gradient_norm(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Mean over samples of |d CE_i / d x_i| (per-sample losses summed, so each x_i sees its own)."""
    x = mr.tensor(images, requires_grad=True)
    (g,) = mr.autograd.grad(F.cross_entropy(model(x), mr.tensor(labels), reduction="sum"), x)
    return float(np.sqrt((g.numpy().reshape(len(images), -1) ** 2).sum(1)).mean())


def penalty_training(steps: int, batch: int, penalty: float, seed: int) -> dict[str, Any]:
    """Part 2: train a penalised and a plain model from the same start; compare input-gradient norms."""
    data = load_digits(train=True)
    images = ((data.images - data.mean) / data.std).astype(np.float32)
    labels = data.labels
    results: dict[str, Any] = {}
    for lam in (0.0, penalty):
        mr.manual_seed(seed)
        model = SmallNet()
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
        rng = np.random.default_rng(seed)
        history = []
        for _ in range(steps):
            idx = rng.choice(len(images), batch, replace=False)
            x = mr.tensor(images[idx], requires_grad=True)
            y = mr.tensor(labels[idx])
            ce = F.cross_entropy(model(x), y)
            loss = ce
            if lam > 0:
                # d(sum_i CE_i)/dx_i: batch * dCE/dx, with a graph so the penalty can be differentiated
                (gx,) = mr.autograd.grad(ce * batch, x, create_graph=True)
                grad_penalty = (gx * gx).reshape(batch, -1).sum(1).mean()
                loss = ce + lam * grad_penalty
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(float(ce.item()))
        model.eval()
        norm = input_gradient_norm(model, images[:256], labels[:256])
        key = "penalised" if lam > 0 else "plain"
        results[key] = {"lambda": lam, "first_ce": history[0], "last_ce": float(np.mean(history[-5:])), "input_grad_norm": norm}
        print(f"  {key:9s} (lambda {lam:g}): CE {history[0]:.3f} -> {np.mean(history[-5:]):.3f}, mean |dCE_i/dx_i| {norm:.4f}")
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/examples/curvature_through_skip", help="folder for results.json")
    parser.add_argument("--quick", action="store_true", help="smaller block, fewer directions and steps (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--penalty", type=float, default=1.0, help="lambda of the gradient penalty")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    print("Part 1: Hessian-vector products through a residual block and its plain twin (float64)")
    part1 = curvature_through_skip(
        channels=2 if args.quick else 4, size=4 if args.quick else 6, batch=2 if args.quick else 4,
        directions=2 if args.quick else 5, seed=args.seed,
    )
    print("Part 2: gradient-penalty training on digits (CE + lambda * |dCE/dx|^2)")
    part2 = penalty_training(steps=15 if args.quick else 150, batch=32, penalty=args.penalty, seed=args.seed)
    results = {"curvature": part1, "penalty": part2}
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
