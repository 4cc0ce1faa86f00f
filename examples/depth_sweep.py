"""Plain vs residual networks of growing depth, with and without BatchNorm, at initialisation.

Each network is a 3x3 conv stem, ``(depth - 2) / 2`` BasicBlocks of 16 channels on the 8x8 digits,
global average pooling and a linear classifier: ``depth`` weighted layers. The blocks are minires'
own :class:`~minires.models.BasicBlock`, with ``plain=True`` for the plain twin and an identity in
place of BatchNorm for the BN-free variants. Convolutions get He initialisation (kaiming normal, as
the ResNets in minires.models), so the only differences are the skips and the normalisation.

For each depth and variant, on one batch of digits with the cross-entropy loss, the script measures

- ``|dL/dW|`` of the first layer (the stem convolution) and of the last (the classifier),
- the RMS of every block's output (how the signal's size changes with depth),
- the per-layer weight-gradient norms of the 56-layer nets (with :class:`minires.viz.GradientFlowRecorder`),

prints a table and draws depth_sweep.png. The numbers are whatever the networks give: read the
tutorial (docs/tutorial.md) for what they show and why.

With ``--weights FILE`` it also records the per-layer gradient norms of a *trained* CIFAR ResNet -- a
PyTorch checkpoint such as akamaster/pytorch_resnet_cifar10's ``resnet56-4bfd9763.th`` (read without
PyTorch, nothing downloaded), or a minires checkpoint -- and of a freshly initialised twin, on one batch
of the images it was trained on (``--data-dir`` for CIFAR), and overlays them (gradient_flow_weights.png).

    python examples/depth_sweep.py [--quick] [--depths 8,20,56,110] [--out runs/examples/depth_sweep]
    python examples/depth_sweep.py --weights resnet56-4bfd9763.th --data-dir cifar-10-batches-py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

import numpy as np
from _weights import batch_for, trained_and_initialised  # examples/_weights.py, beside this script

import minires as mr
import minires.nn as nn
import minires.nn.functional as F
from minires.data import load_digits
from minires.models import BasicBlock, CifarResNet
from minires.viz import GradientFlowRecorder, plot_gradient_flow

VARIANTS = (("plain", False, True), ("residual", True, True), ("plain, no BN", False, False), ("residual, no BN", True, False))


class ConvStack(nn.Module):
    """stem conv (+BN) + ReLU, ``(depth - 2) // 2`` BasicBlocks of ``width`` channels, pool, linear."""

    def __init__(self, depth: int, residual: bool, batchnorm: bool, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        if depth < 4 or depth % 2:
            raise ValueError(f"ConvStack: depth must be even and >= 4 (stem + 2 per block + classifier), got {depth}")

        def norm(channels: int) -> nn.Module:
            return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()

        self.conv1 = nn.Conv2d(1, width, kernel_size=3, padding=1, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU()
        self.blocks = nn.Sequential(*[
            BasicBlock(width, width, norm_layer=norm, plain=not residual) for _ in range((depth - 2) // 2)
        ])
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: mr.Tensor) -> mr.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.blocks(x)
        return self.fc(self.pool(x).flatten(1))


def rms(t: mr.Tensor) -> float:
    return float(np.sqrt(np.mean(np.square(t.numpy().astype(np.float64)))))


def measure(depth: int, residual: bool, batchnorm: bool, images: np.ndarray, labels: np.ndarray, seed: int,
            record_layers: bool = False) -> dict[str, Any]:
    """Build one network (float64, so deep BN-free nets cannot overflow) and measure it on one batch."""
    mr.manual_seed(seed)
    model = ConvStack(depth, residual, batchnorm).double()
    block_rms: list[float] = [math.nan] * len(model.blocks)
    handles = [block.register_forward_hook(lambda m, a, out, i=i: block_rms.__setitem__(i, rms(out)))
               for i, block in enumerate(model.blocks)]
    recorder = GradientFlowRecorder(model) if record_layers else None
    loss = F.cross_entropy(model(mr.tensor(images)), mr.tensor(labels))
    loss.backward()
    for h in handles:
        h.remove()
    result = {
        "loss": float(loss.item()),
        "first_grad": float(np.linalg.norm(model.conv1.weight.grad.numpy())),
        "last_grad": float(np.linalg.norm(model.fc.weight.grad.numpy())),
        "block_rms": block_rms,
    }
    if recorder is not None:
        result["layers"] = [r.as_dict() for r in recorder.records()]
        recorder.remove()
    return result


def plot(results: dict[str, dict[int, dict[str, Any]]], depths: list[int], layer_depth: int | None, path: str) -> None:
    from matplotlib.figure import Figure

    panels = 3 if layer_depth is not None else 2
    fig = Figure(figsize=(5 * panels, 4))
    axes = fig.subplots(1, panels)
    styles = {"plain": ("C3", "-"), "residual": ("C0", "-"), "plain, no BN": ("C3", "--"), "residual, no BN": ("C0", "--")}
    for name, by_depth in results.items():
        color, ls = styles[name]
        axes[0].plot(depths, [by_depth[d]["first_grad"] for d in depths], color=color, ls=ls, marker="o", label=name)
        deepest = by_depth[depths[-1]]["block_rms"]
        axes[1].plot(range(1, len(deepest) + 1), deepest, color=color, ls=ls, label=name)
        if layer_depth is not None:
            layers = by_depth[layer_depth]["layers"]
            axes[2].plot([r["depth"] for r in layers], [r["weight_grad_norm"] for r in layers], color=color, ls=ls, label=name)
    axes[0].set(xlabel="depth (weighted layers)", ylabel="|dL/dW| of the first layer", yscale="log",
                title="first-layer gradient at initialisation")
    axes[1].set(xlabel="block", ylabel="RMS of block output", yscale="log", title=f"activations through depth {depths[-1]}")
    if layer_depth is not None:
        axes[2].set(xlabel="layer (forward order)", ylabel="|dL/dW|", yscale="log", title=f"per-layer gradient, depth {layer_depth}")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def compare_weights(path: str, trained: CifarResNet, initialised: CifarResNet, images: np.ndarray, labels: np.ndarray,
                    out: str) -> dict[str, Any]:
    """Per-layer gradient norms of the trained net from ``path`` and of its initialised twin, on one batch."""
    flows: dict[str, list[Any]] = {}
    for name, model in (("initialised", initialised), ("trained", trained)):
        recorder = GradientFlowRecorder(model.train())
        loss = F.cross_entropy(model(mr.tensor(images)), mr.tensor(labels))
        loss.backward()
        flows[name] = recorder.records()
        recorder.remove()
        first, last = flows[name][0], flows[name][-1]
        print(f"ResNet-{trained.depth} {name:<11} loss {float(loss.item()):>8.4f}   |dL/dW| first layer {first.weight_grad_norm:.3e}"
              f"   last layer {last.weight_grad_norm:.3e}   first/last {first.weight_grad_norm / last.weight_grad_norm:.3e}")
    plot_gradient_flow(flows, os.path.join(out, "gradient_flow_weights.png"),
                       title=f"ResNet-{trained.depth}: initialised vs {os.path.basename(path)}")
    return {"weights": path, "depth": trained.depth, "images": len(labels),
            "layers": {name: [r.as_dict() for r in records] for name, records in flows.items()}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/examples/depth_sweep", help="folder for figures and results")
    parser.add_argument("--quick", action="store_true", help="depths 8 and 20 on 16 images (a few seconds)")
    parser.add_argument("--depths", default=None, help="comma-separated even depths (default 8,20,56,110)")
    parser.add_argument("--batch", type=int, default=None, help="images in the batch (default 64, quick 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", help="also compare the gradient flow of this trained CIFAR ResNet (PyTorch .th/.pt "
                        "or minires .npz) with its initialised twin")
    parser.add_argument("--data-dir", help="CIFAR python-version folder or .tar.gz, for --weights of a 3-channel net")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    depths = [int(d) for d in (args.depths or ("8,20" if args.quick else "8,20,56,110")).split(",")]
    batch = args.batch or (16 if args.quick else 64)
    layer_depth = 56 if 56 in depths else depths[-1]
    if args.weights:  # read the file (and its images) first, so a bad --weights / --data-dir fails at once
        trained, initialised = trained_and_initialised(args.weights, args.seed)
        weight_batch = batch_for(trained, args.weights, batch, args.data_dir)

    data = load_digits(train=True)
    images, labels = data.get_batch(np.arange(batch))
    images = ((images - data.mean[0]) / data.std[0]).astype(np.float64)

    results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name, _, _ in VARIANTS}
    print(f"{batch} digits, cross-entropy, He-initialised convolutions, float64")
    print(f"{'network':<17} {'depth':>5} {'loss':>10} {'|dL/dW| first':>14} {'|dL/dW| last':>13} {'first/last':>11} "
          f"{'RMS block 1':>12} {'RMS last block':>15}")
    for depth in depths:
        for name, residual, batchnorm in VARIANTS:
            r = measure(depth, residual, batchnorm, images, labels, args.seed, record_layers=depth == layer_depth)
            results[name][depth] = r
            print(f"{name:<17} {depth:>5} {r['loss']:>10.4g} {r['first_grad']:>14.3e} {r['last_grad']:>13.3e} "
                  f"{r['first_grad'] / r['last_grad']:>11.3e} {r['block_rms'][0]:>12.3e} {r['block_rms'][-1]:>15.3e}")
    plot(results, depths, layer_depth, os.path.join(args.out, "depth_sweep.png"))
    summary: dict[str, Any] = {"depths": depths, "batch": batch,
                               "results": {k: {str(d): v for d, v in r.items()} for k, r in results.items()}}
    if args.weights:
        print(f"\ngradient flow of {args.weights} and of an initialised twin, one batch, cross-entropy, training mode")
        summary["weights"] = compare_weights(args.weights, trained, initialised, *weight_batch, args.out)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    print(f"figures and results in {args.out}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
