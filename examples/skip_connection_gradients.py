"""One residual block, taken apart: the identity and branch contributions to the input gradient.

For ``y = F(x) + x`` the chain rule gives ``dL/dx = dL/dy + dL/dy . dF/dx``: the skip hands the
upstream gradient down unchanged and the branch adds its own term. The script

1. probes one BasicBlock (float64) with :class:`minires.viz.SkipProbe`, prints the two contributions
   and checks that the identity term equals dL/dy and that the two add up to the engine's dL/dx;
2. confirms both terms by finite differences: the identity term is the derivative of the loss with
   the branch input frozen, the branch term the derivative with the shortcut input frozen;
3. repeats with the block's last BatchNorm scale at zero (``zero_init_last``): F is constant, its
   term vanishes, and the gradient passes through the block untouched;
4. draws the block's autograd graph (block_graph.png; only block_graph.dot without Graphviz);
5. probes every block of a ResNet-20 at initialisation on a batch of digits and plots the two
   contributions block by block (skip_probe.png).

With ``--weights FILE`` part 5 probes a *trained* CIFAR ResNet instead -- a PyTorch checkpoint such as
akamaster/pytorch_resnet_cifar10's ``resnet56-4bfd9763.th`` (read without PyTorch, nothing downloaded),
or a minires checkpoint -- beside a freshly initialised twin of the same architecture, on a batch of the
images it was trained on (``--data-dir`` for CIFAR), and plots both (skip_probe.png, skip_probe_trained.png).

    python examples/skip_connection_gradients.py [--quick] [--out runs/examples/skip_connection_gradients]
    python examples/skip_connection_gradients.py --weights resnet56-4bfd9763.th --data-dir cifar-10-batches-py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

import numpy as np
from _weights import batch_for, trained_and_initialised  # examples/_weights.py, beside this script

import minires as mr
import minires.nn.functional as F
from minires.data import load_digits
from minires.models import BasicBlock, CifarResNet
from minires.viz import SkipProbe, format_skip_table, render


def numerical_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of a scalar function, one element at a time: (f(x + e) - f(x - e)) / 2e."""
    grad = np.zeros_like(x)
    flat, out = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + eps
        plus = f(x)
        flat[i] = keep - eps
        minus = f(x)
        flat[i] = keep
        out[i] = (plus - minus) / (2 * eps)
    return grad


def probe_one_block(block: BasicBlock, x0: np.ndarray, readout: np.ndarray) -> dict[str, Any]:
    """Probe ``block`` under the loss L = sum(block(x) * readout); check the split by finite differences."""
    x = mr.tensor(x0.copy(), requires_grad=True)
    with SkipProbe(block) as probe:
        loss = (block(x) * mr.tensor(readout)).sum()
        loss.backward()
    (rec,) = probe.records()
    print(format_skip_table(probe.table()))

    identity_is_upstream = bool(np.array_equal(rec.identity_grad, rec.out_grad))
    sum_error = float(np.abs(rec.identity_grad + rec.branch_grad - x.grad.numpy()).max())
    print(f"identity term == dL/dy exactly: {identity_is_upstream}")
    print(f"max |identity + branch - dL/dx|: {sum_error:.1e}")

    # Finite differences of L(relu(F(x_branch) + x_shortcut)) in each argument, the other held at x0.
    def loss_given(x_branch: np.ndarray, x_shortcut: np.ndarray) -> float:
        with mr.no_grad():
            out = block.relu(block.branch(mr.tensor(x_branch)) + mr.tensor(x_shortcut))
            return float((out.numpy() * readout).sum())

    fd_identity = numerical_gradient(lambda xs: loss_given(x0, xs), x0.copy())
    fd_branch = numerical_gradient(lambda xb: loss_given(xb, x0), x0.copy())
    err_identity = float(np.abs(fd_identity - rec.identity_grad).max())
    err_branch = float(np.abs(fd_branch - rec.branch_grad).max())
    print(f"finite differences: max error identity term {err_identity:.1e}, branch term {err_branch:.1e}")
    return {"identity_norm": rec.identity_norm, "branch_norm": rec.branch_norm, "total_norm": rec.total_norm,
            "identity_is_upstream": identity_is_upstream, "sum_error": sum_error,
            "fd_error_identity": err_identity, "fd_error_branch": err_branch}


def digits_batch(batch: int) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` training digits, normalised: (images (B, 1, 8, 8) float32, labels (B,))."""
    data = load_digits(train=True)
    images, labels = data.get_batch(np.arange(batch))
    return ((images - data.mean[0]) / data.std[0]).astype(np.float32), labels


def probe_network(model: CifarResNet, images: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
    """SkipProbe table of ``model`` (in training mode) under the cross-entropy loss of one batch."""
    model.train()
    with SkipProbe(model) as probe:
        loss = F.cross_entropy(model(mr.tensor(images)), mr.tensor(labels))
        loss.backward()
    return probe.table()


def plot_network(rows: list[dict[str, Any]], title: str, path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6))
    ax = fig.subplots()
    idx = np.arange(len(rows))
    ax.bar(idx - 0.27, [r["identity_norm"] for r in rows], 0.27, label="|identity path|  (= |dL/dy| for identity shortcuts)")
    ax.bar(idx, [r["branch_norm"] for r in rows], 0.27, label="|branch path|  |dL/dy . dF/dx|")
    ax.bar(idx + 0.27, [r["total_norm"] for r in rows], 0.27, label="|dL/dx|  (their sum)")
    ax.set_xticks(idx, [r["block"] + ("\n(opt. A)" if r["shortcut"] != "identity" else "") for r in rows],
                  rotation=0, fontsize=7)
    ax.set_ylabel("gradient norm")
    ax.set_title(f"{title}: gradient reaching each block's input, by path")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/examples/skip_connection_gradients", help="folder for figures and results")
    parser.add_argument("--quick", action="store_true", help="a ResNet-8 on 16 images for part 4 (a few seconds)")
    parser.add_argument("--depth", type=int, default=None, help="ResNet depth for part 4 (default 20, quick 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", help="probe this trained CIFAR ResNet (PyTorch .th/.pt or minires .npz) beside its "
                        "initialised twin in part 5")
    parser.add_argument("--data-dir", help="CIFAR python-version folder or .tar.gz, for --weights of a 3-channel net")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    batch = 16 if args.quick else 128
    if args.weights:  # read the file (and its images) first, so a bad --weights / --data-dir fails at once
        trained, initialised = trained_and_initialised(args.weights, args.seed)
        images, labels = batch_for(trained, args.weights, batch, args.data_dir)
        if args.depth and args.depth != trained.depth:
            raise SystemExit(f"--depth {args.depth}: {args.weights} holds a ResNet-{trained.depth}")
    rng = np.random.default_rng(args.seed)
    mr.manual_seed(args.seed)

    # A small block keeps the finite differences cheap: 2 x 4 x 5 x 5 = 200 input elements.
    block = BasicBlock(4, 4).double()
    x0 = rng.normal(size=(2, 4, 5, 5))
    readout = rng.normal(size=(2, 4, 5, 5))  # L = sum(y * readout): dL/dy is this random array where relu passes
    print("== one BasicBlock, as initialised (BatchNorm scale 1) ==")
    fresh = probe_one_block(block, x0, readout)
    x = mr.tensor(x0, requires_grad=True)
    picture = render((block(x) * mr.tensor(readout)).sum(), os.path.join(args.out, "block_graph.png"),
                     {**dict(block.named_parameters()), "x": x}, title="L = sum(BasicBlock(x) * r)")
    print(picture.message)

    print("\n== the same block with its last BatchNorm scale zeroed (zero_init_last) ==")
    block.zero_init_last()
    zeroed = probe_one_block(block, x0, readout)

    results: dict[str, Any] = {"block": fresh, "zero_init_block": zeroed}
    if args.weights:
        depth = trained.depth
        rows_trained = probe_network(trained, images, labels)
        print(f"\n== every block of the trained ResNet-{depth} in {args.weights} ({len(labels)} images, cross-entropy) ==")
        print(format_skip_table(rows_trained))
        plot_network(rows_trained, f"ResNet-{depth}, trained ({os.path.basename(args.weights)})",
                     os.path.join(args.out, "skip_probe_trained.png"))
        results["trained"] = {"weights": args.weights, "network": rows_trained}
        model = initialised
    else:
        depth = args.depth or (8 if args.quick else 20)
        mr.manual_seed(args.seed)
        model = CifarResNet(depth, num_classes=10, in_channels=1)
        images, labels = digits_batch(batch)
    print(f"\n== every block of a ResNet-{depth} at initialisation ({len(labels)} images, cross-entropy) ==")
    rows = probe_network(model, images, labels)
    print(format_skip_table(rows))
    plot_network(rows, f"ResNet-{depth} at initialisation", os.path.join(args.out, "skip_probe.png"))
    results.update(network_depth=depth, network=rows)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"figures and results in {args.out}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
