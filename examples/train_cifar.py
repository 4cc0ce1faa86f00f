"""The CIFAR-10 recipe as code: ResNet-20/56 (He et al.'s CIFAR nets) or ResNet-18 with the CIFAR stem.

The recipe (``minires.training.recipes.RECIPES["cifar10"]``): random 32x32 crops of the image padded
by 4, horizontal flips, per-channel normalisation; SGD with Nesterov momentum 0.9, weight decay
5e-4 (not on BatchNorm parameters and biases), learning rate 0.1 with a one-epoch linear warm-up
and a cosine decay to zero, batch 128. :class:`minires.training.Trainer` runs it and writes
metrics.jsonl, checkpoint.npz and curves.png into ``--out``; this script is the same as::

    minires-train --dataset cifar10 --data-dir PATH --model resnet20

minires never downloads data: pass ``--data-dir`` with the "CIFAR-10 python version" (the folder
``cifar-10-batches-py`` or its .tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html).

``--quick`` (what the test suite runs) needs no data: it pushes one *synthetic* CIFAR-shaped batch
(random 3x32x32 images) through each model to show shapes and parameter counts, then, since there is
no CIFAR-10 without ``--data-dir``, trains ResNet-20 for one epoch on a 256-image subset of the
embedded 8x8 *digits* (with ``--data-dir`` it trains on 512 CIFAR-10 images instead).

    python examples/train_cifar.py --data-dir ~/data/cifar-10-batches-py [--model resnet56] [--epochs 30]
    python examples/train_cifar.py --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any

import numpy as np

import minires as mr
import minires.nn.functional as F
from minires.models import resnet18, resnet20, resnet56
from minires.nn import Module
from minires.training import TrainConfig, Trainer
from minires.training.recipes import RECIPES

MODELS = {
    "resnet20": lambda: resnet20(num_classes=10),
    "resnet56": lambda: resnet56(num_classes=10),
    "resnet18": lambda: resnet18(num_classes=10, stem="cifar"),  # 3x3 stride-1 stem, no max pool, for 32x32
}


def synthetic_step(name: str, model: Module, batch: int, seed: int) -> dict[str, Any]:
    """One forward/backward of random CIFAR-shaped images: output shape, loss, time, parameter count."""
    rng = np.random.default_rng(seed)
    images = mr.tensor(rng.normal(size=(batch, 3, 32, 32)).astype(np.float32))
    labels = mr.tensor(rng.integers(0, 10, batch))
    start = time.perf_counter()
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    print(f"  {name:<9} {params:>11,} parameters  (N, 3, 32, 32) -> {tuple(logits.shape)}  loss {loss.item():.3f} "
          f"(about ln 10 = 2.303 at initialisation)  forward+backward {seconds:.2f}s")
    return {"model": name, "parameters": params, "logits_shape": list(logits.shape), "loss": float(loss.item()),
            "seconds": seconds}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/examples/train_cifar", help="folder for metrics, checkpoint and figures")
    parser.add_argument("--quick", action="store_true", help="synthetic CIFAR-shaped check + 1 epoch on a small subset")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 python version folder or .tar.gz")
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet20")
    parser.add_argument("--epochs", type=int, default=None, help=f"default: the recipe's ({RECIPES['cifar10'].epochs})")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--train-subset", type=int, default=None, help="train on this many images")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (needs cupy)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    recipe = RECIPES["cifar10"]
    print("CIFAR-10 recipe:", ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(recipe).items()))
    results: dict[str, Any] = {"recipe": dataclasses.asdict(recipe)}

    if args.quick:
        print("synthetic CIFAR-shaped batch (random images, no data needed):")
        mr.manual_seed(args.seed)
        results["synthetic"] = [synthetic_step(name, MODELS[name](), 2, args.seed) for name in ("resnet20", "resnet18")]

    if args.data_dir is None and not args.quick:
        parser.error("training on CIFAR-10 needs --data-dir (minires never downloads data); try --quick for a dry run")

    if args.data_dir is not None:
        dataset, subset = "cifar10", args.train_subset or (512 if args.quick else None)
        epochs = args.epochs or (1 if args.quick else None)
    else:
        dataset, subset, epochs = "digits", args.train_subset or 256, args.epochs or 1
        print(f"no --data-dir: the quick training run uses {subset} images of the embedded 8x8 digits, NOT CIFAR-10")
    config = TrainConfig(
        dataset=dataset, data_dir=args.data_dir, model=args.model, epochs=epochs, batch_size=args.batch_size, lr=args.lr,
        train_subset=subset, out=args.out, progress=not args.quick, seed=args.seed, device=args.device,
    )
    records = Trainer(config).fit()
    last = records[-1]
    print(f"{args.model} on {dataset}{f' ({subset} training images)' if subset else ''}: after {last['epoch']} epochs "
          f"train accuracy {100 * last['train_acc']:.2f}%, test accuracy {100 * last['test_acc']:.2f}%, "
          f"{last['images_per_s']:.0f} images/s")
    results.update({"dataset": dataset, "train_subset": subset, "model": args.model, "epochs": records})
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    print(f"metrics, checkpoint and curves in {args.out}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
