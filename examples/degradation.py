"""He et al.'s degradation experiment in small: plain-20/56 against ResNet-20/56, training-error curves.

He et al. (2015, fig. 1 and 6) trained plain networks of 20 and 56 layers and found the deeper one
had the *higher training error*: not overfitting, an optimisation failure. The residual twins, with
exactly the same parameters, did not degrade. This script repeats the comparison with
:class:`minires.training.Trainer` (the ``minires-train`` loop): the same recipe, seed and data order
for every network, only ``--depths`` and ``plain`` changing. By default on the embedded 8x8 digits
(a few minutes on a laptop CPU); with ``--data-dir`` on CIFAR-10 (long on a CPU, use a GPU with
``--device cuda``). The figure (degradation.png) shows training error (solid) and test error
(dashed) per epoch; the numbers are printed and saved to results.json.

    python examples/degradation.py [--quick] [--epochs 10] [--data-dir PATH] [--out runs/examples/degradation]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from minires.training import TrainConfig, Trainer


def run(depth: int, plain: bool, args: argparse.Namespace) -> list[dict[str, Any]]:
    name = f"{'plain' if plain else 'resnet'}{depth}"
    config = TrainConfig(
        dataset="cifar10" if args.data_dir else "digits", data_dir=args.data_dir, model=f"resnet{depth}", plain=plain,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, train_subset=args.train_subset,
        out=os.path.join(args.out, name), progress=False, seed=args.seed, device=args.device,
    )
    return Trainer(config).fit()


def plot(curves: dict[str, list[dict[str, Any]]], path: str, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for i, (name, records) in enumerate(curves.items()):
        epochs = [r["epoch"] for r in records]
        color = f"C{i}"
        ax.plot(epochs, [100 * (1 - r["train_acc"]) for r in records], color=color, lw=2 if "plain" in name else 1.5,
                ls="-", marker="o", markersize=3, label=f"{name} train")
        ax.plot(epochs, [100 * (1 - r["test_acc"]) for r in records], color=color, ls="--", alpha=0.7, label=f"{name} test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/examples/degradation", help="folder for figures and results")
    parser.add_argument("--quick", action="store_true", help="plain-20 vs ResNet-20 on 256 digits for 1 epoch")
    parser.add_argument("--depths", default=None, help="comma-separated CIFAR ResNet depths (default 20,56; quick 20)")
    parser.add_argument("--epochs", type=int, default=None, help="default 10 (quick 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the data set's recipe (64 digits, 128 CIFAR)")
    parser.add_argument("--lr", type=float, default=None, help="default: the recipe's (0.1)")
    parser.add_argument("--train-subset", type=int, default=None, help="train on this many images (quick: 256)")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 python version folder or .tar.gz (default: digits)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    depths = [int(d) for d in (args.depths or ("20" if args.quick else "20,56")).split(",")]
    if args.epochs is None:
        args.epochs = 1 if args.quick else 10
    if args.quick and args.train_subset is None:
        args.train_subset = 256
    os.makedirs(args.out, exist_ok=True)

    curves: dict[str, list[dict[str, Any]]] = {}
    for depth in depths:
        for plain in (True, False):
            curves[f"{'plain' if plain else 'resnet'}-{depth}"] = run(depth, plain, args)

    dataset = "CIFAR-10" if args.data_dir else "digits"
    subset = f", {args.train_subset} training images" if args.train_subset else ""
    print(f"\nfinal epoch ({args.epochs} epochs on {dataset}{subset}):")
    print(f"{'network':<12} {'train loss':>10} {'train error':>12} {'test error':>11} {'s/epoch':>8}")
    for name, records in curves.items():
        last = records[-1]
        seconds = sum(r["seconds"] for r in records) / len(records)
        print(f"{name:<12} {last['train_loss']:>10.4f} {100 * (1 - last['train_acc']):>11.2f}% "
              f"{100 * (1 - last['test_acc']):>10.2f}% {seconds:>8.1f}")
    plot(curves, os.path.join(args.out, "degradation.png"), f"plain vs residual on {dataset}: error by epoch")
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"dataset": dataset, "epochs": args.epochs, "train_subset": args.train_subset, "curves": curves}, f, indent=1)
    print(f"figures and results in {args.out}")
    return curves


if __name__ == "__main__":
    main(sys.argv[1:])
