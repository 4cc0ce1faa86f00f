"""A tiny network by hand: forward with minires ops, backward by the chain rule in NumPy, and the two compared.

The network classifies the 8x8 digits (flattened to 64 numbers) with three weight matrices and one
skip connection, so the graph has a fan-out and a rejoin::

    h1 = relu(x W1 + b1)                  (N, 32)
    h2 = h1 + relu(h1 W2 + b2)            (N, 32)   <- skip: h1 feeds both terms of the sum
    logits = h2 W3 + b3                   (N, 10)
    loss = cross_entropy(logits, y)

The script (1) runs minires' backward and a hand-written backward and prints their largest
difference, (2) draws the autograd graph (graph.png / graph.svg with Graphviz, graph.dot always),
(3) checks the gradient against finite differences with ``mr.gradcheck``, and (4) trains the
network with plain SGD, plotting the loss (loss.png).

    python examples/autograd_from_scratch.py [--quick] [--out runs/examples/autograd_from_scratch]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

import minires as mr
import minires.nn.functional as F
from minires.data import load_digits
from minires.viz import render


def init_params(rng: np.random.Generator, hidden: int = 32, dtype: Any = np.float32) -> dict[str, mr.Tensor]:
    """He-initialised weights (std sqrt(2 / fan_in)) and zero biases, as leaf tensors that require grad."""
    def weight(fan_in: int, fan_out: int) -> mr.Tensor:
        return mr.tensor(rng.normal(0, np.sqrt(2 / fan_in), (fan_in, fan_out)).astype(dtype), requires_grad=True)

    def bias(n: int) -> mr.Tensor:
        return mr.tensor(np.zeros(n, dtype=dtype), requires_grad=True)

    return {"W1": weight(64, hidden), "b1": bias(hidden), "W2": weight(hidden, hidden), "b2": bias(hidden),
            "W3": weight(hidden, 10), "b3": bias(10)}


def forward(p: dict[str, mr.Tensor], x: mr.Tensor, y: mr.Tensor) -> mr.Tensor:
    """The network above, built from minires ops; every op records a node in the autograd graph."""
    h1 = mr.relu(x @ p["W1"] + p["b1"])
    h2 = h1 + mr.relu(h1 @ p["W2"] + p["b2"])
    logits = h2 @ p["W3"] + p["b3"]
    return F.cross_entropy(logits, y)


def manual_backward(p: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and gradients by hand: the same forward in NumPy, then the chain rule, op by op, in reverse."""
    a1 = x @ p["W1"] + p["b1"]
    h1 = np.maximum(a1, 0)
    a2 = h1 @ p["W2"] + p["b2"]
    h2 = h1 + np.maximum(a2, 0)
    logits = h2 @ p["W3"] + p["b3"]
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    n = x.shape[0]
    loss = float(-np.log(probs[np.arange(n), y]).mean())

    d_logits = probs.copy()  # d(mean cross-entropy)/d logits = (softmax - onehot) / N
    d_logits[np.arange(n), y] -= 1
    d_logits /= n
    g = {"W3": h2.T @ d_logits, "b3": d_logits.sum(axis=0)}
    d_h2 = d_logits @ p["W3"].T
    d_a2 = d_h2 * (a2 > 0)  # through the branch's relu
    g["W2"] = h1.T @ d_a2
    g["b2"] = d_a2.sum(axis=0)
    d_h1 = d_h2 + d_a2 @ p["W2"].T  # the skip: identity path + branch path, summed
    d_a1 = d_h1 * (a1 > 0)
    g["W1"] = x.T @ d_a1
    g["b1"] = d_a1.sum(axis=0)
    return loss, g


def load_flat_digits(limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Training digits as (N, 64) standardised float32 rows and int64 labels."""
    data = load_digits(train=True)
    images, labels = data.get_batch(np.arange(len(data)))
    x = images.reshape(len(images), -1).astype(np.float32)
    x = (x - x.mean()) / x.std()
    if limit is not None:
        x, labels = x[:limit], labels[:limit]
    return x, labels.astype(np.int64)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/examples/autograd_from_scratch", help="folder for figures and results")
    parser.add_argument("--quick", action="store_true", help="fewer images and steps (a few seconds)")
    parser.add_argument("--steps", type=int, default=None, help="SGD steps (default 300, quick 30)")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    steps = args.steps or (30 if args.quick else 300)
    rng = np.random.default_rng(args.seed)
    x_np, y_np = load_flat_digits(256 if args.quick else None)
    x, y = mr.tensor(x_np), mr.tensor(y_np)
    params = init_params(rng)

    # 1. minires' backward against the chain rule by hand.
    loss = forward(params, x, y)
    loss.backward()
    manual_loss, manual = manual_backward({k: v.numpy() for k, v in params.items()}, x_np, y_np)
    diffs = {k: float(np.abs(params[k].grad.numpy() - manual[k]).max()) for k in params}
    print(f"images: {len(x_np)}, parameters: {sum(p.numel() for p in params.values())}")
    print(f"loss: minires {loss.item():.6f}, by hand {manual_loss:.6f}")
    print("largest |minires grad - hand grad| per parameter (float32):")
    for k, d in diffs.items():
        print(f"  {k}: {d:.2e}  (|grad| = {np.linalg.norm(manual[k]):.3e})")
    max_diff = max(diffs.values())
    print(f"max grad difference: {max_diff:.3e}")

    # 2. The graph picture: parameters named, the skip's fan-out (h1) and rejoin (the add) marked.
    picture = render(loss, os.path.join(args.out, "graph.png"), params={**params, "x": x},
                     title="loss = cross_entropy(h2 W3 + b3), h2 = h1 + relu(h1 W2 + b2)")
    print(picture.message)

    # 3. gradcheck: the same function in float64 on 6 images, every parameter against finite differences.
    small = {k: mr.tensor(v.numpy().astype(np.float64), requires_grad=True) for k, v in params.items()}
    xs, ys = mr.tensor(x_np[:6].astype(np.float64)), mr.tensor(y_np[:6])
    names = list(small)

    def loss_of(*tensors: mr.Tensor) -> mr.Tensor:
        return forward(dict(zip(names, tensors)), xs, ys)

    ok = mr.gradcheck(loss_of, [small[k] for k in names], fast_mode=args.quick)
    print(f"gradcheck ({'fast mode, random directions' if args.quick else 'full Jacobian'}, float64): {ok}")

    # 4. Train with plain SGD: p <- p - lr * grad, outside the graph.
    losses = []
    for _ in range(steps):
        loss = forward(params, x, y)
        for p in params.values():
            p.grad = None
        loss.backward()
        with mr.no_grad():
            for p in params.values():
                p.data -= args.lr * p.grad.data
        losses.append(loss.item())
    with mr.no_grad():
        h1 = mr.relu(x @ params["W1"] + params["b1"])
        logits = (h1 + mr.relu(h1 @ params["W2"] + params["b2"])) @ params["W3"] + params["b3"]
    accuracy = float((logits.numpy().argmax(axis=1) == y_np).mean())
    print(f"SGD: loss {losses[0]:.4f} -> {losses[-1]:.4f} after {steps} steps, training accuracy {100 * accuracy:.1f}%")

    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ax.plot(range(1, steps + 1), losses)
    ax.set_xlabel("SGD step")
    ax.set_ylabel("training loss")
    ax.set_title("tiny residual MLP on digits, by hand")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "loss.png"), dpi=100)

    results = {"max_grad_diff": max_diff, "gradcheck": bool(ok), "first_loss": losses[0], "final_loss": losses[-1],
               "train_accuracy": accuracy, "graph_image": picture.image_path, "graph_dot": picture.dot_path}
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"figures and results in {args.out}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
