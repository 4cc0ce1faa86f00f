"""Write a new differentiable op, and test it the way minires tests its own: gradcheck and hypothesis.

The op is Swish (also called SiLU): ``swish(x) = x * sigmoid(x)``, with derivative
``s + x * s * (1 - s)`` where ``s = sigmoid(x)``. A :class:`minires.Function` gives ``forward`` and
``backward`` on raw arrays; ``Swish.apply(t)`` records it in the graph like any built-in op.

The script checks it four ways:

1. ``mr.gradcheck`` on a random float64 array (backward against central finite differences);
2. a hypothesis property test, ``@given(...)`` over arrays drawn by :mod:`minires.testing` (many
   shapes, values in [-6, 6]), each example gradchecked, run here under a fixed settings profile;
3. the same two checks on a deliberately wrong backward (the ``x * s * (1 - s)`` term forgotten),
   to show what a failure looks like: gradcheck's message and hypothesis' shrunk counterexample;
4. a small conv net using Swish as its activation, gradchecked end to end in fast mode.

It also plots swish, its analytic derivative and finite differences (swish.png).

    python examples/custom_op_gradcheck.py [--quick] [--out runs/examples/custom_op_gradcheck]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings

import minires as mr
import minires.nn as nn
import minires.nn.functional as F
from minires.testing import float_arrays, shapes


class Swish(mr.Function):
    """swish(x) = x * sigmoid(x), elementwise, any shape."""

    @staticmethod
    def forward(ctx: mr.Context, x: Any) -> Any:
        s = 1 / (1 + np.exp(-x))
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx: mr.Context, grad: Any) -> Any:
        x, s = ctx.saved_tensors
        return grad * (s + x * s * (1 - s))


class BuggySwish(Swish):
    """The same forward with a classic mistake in backward: the product rule's second term is missing."""

    @staticmethod
    def backward(ctx: mr.Context, grad: Any) -> Any:
        x, s = ctx.saved_tensors
        return grad * s


class SwishModule(nn.Module):
    """Swish as a layer, so it can sit in nn.Sequential like nn.ReLU."""

    def forward(self, x: mr.Tensor) -> mr.Tensor:
        return Swish.apply(x)


def property_test(op: type[mr.Function], max_examples: int) -> tuple[bool, str, int]:
    """Run 'gradcheck passes for every drawn array' under hypothesis; (passed, message, examples tried)."""
    tried = []

    @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(float_arrays(shapes(min_dims=0, max_dims=3, max_side=4), low=-6.0, high=6.0))
    def gradient_matches_finite_differences(x: np.ndarray) -> None:
        tried.append(x.shape)
        assert mr.gradcheck(op.apply, [mr.tensor(x, requires_grad=True)])

    try:
        gradient_matches_finite_differences()
    except mr.GradcheckError as exc:
        return False, str(exc), len(tried)
    return True, "", len(tried)


def plot(path: str) -> float:
    """swish, its backward, and central differences of its forward on a grid; returns the largest gap."""
    from matplotlib.figure import Figure

    xs = np.linspace(-6, 6, 241)
    t = mr.tensor(xs, requires_grad=True)
    y = Swish.apply(t)
    y.sum().backward()
    eps = 1e-6
    with mr.no_grad():
        numeric = (Swish.apply(mr.tensor(xs + eps)).numpy() - Swish.apply(mr.tensor(xs - eps)).numpy()) / (2 * eps)
    analytic = t.grad.numpy()
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    ax.plot(xs, y.numpy(), label="swish(x) = x sigmoid(x)")
    ax.plot(xs, analytic, label="backward (analytic derivative)")
    ax.plot(xs[::8], numeric[::8], "o", markersize=3, label="central differences")
    ax.plot(xs, xs * 0 + np.maximum(xs, 0), color="grey", lw=0.8, ls=":", label="relu, for comparison")
    ax.set_xlabel("x")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Swish and its derivative")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return float(np.abs(analytic - numeric).max())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/examples/custom_op_gradcheck", help="folder for figures and results")
    parser.add_argument("--quick", action="store_true", help="20 hypothesis examples instead of 200")
    parser.add_argument("--examples", type=int, default=None, help="hypothesis examples per property")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    examples = args.examples or (20 if args.quick else 200)
    rng = np.random.default_rng(args.seed)

    # 1. One gradcheck: the whole Jacobian of swish on a (3, 4) array against finite differences.
    x = mr.tensor(rng.normal(size=(3, 4)) * 3, requires_grad=True)
    ok = mr.gradcheck(Swish.apply, [x])
    print(f"gradcheck Swish on a random (3, 4) float64 array: {ok}")

    # 2. The property over many arrays drawn by minires.testing.
    passed, _, tried = property_test(Swish, examples)
    print(f"hypothesis property 'Swish passes gradcheck': {'passed' if passed else 'FAILED'} on {tried} examples")

    # 3. The wrong backward, caught both ways.
    try:
        mr.gradcheck(BuggySwish.apply, [x])
        buggy_caught = False
        print("gradcheck BuggySwish: passed (it should not have)")
    except mr.GradcheckError as exc:
        buggy_caught = True
        print(f"gradcheck BuggySwish raised GradcheckError:\n  {exc}")
    buggy_passed, message, buggy_tried = property_test(BuggySwish, examples)
    print(f"hypothesis property 'BuggySwish passes gradcheck': {'passed' if buggy_passed else 'failed'} "
          f"after {buggy_tried} examples (including shrinking)")
    if message:
        print(f"  shrunk counterexample's error: {message.splitlines()[0]}")

    # 4. Swish inside a network: conv -> swish -> conv -> swish -> pool -> linear, checked end to end.
    mr.manual_seed(args.seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), SwishModule(), nn.Conv2d(4, 4, 3, padding=1), SwishModule(),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(4, 3),
    ).double()
    images = mr.tensor(rng.normal(size=(2, 1, 6, 6)), requires_grad=True)
    labels = mr.tensor(np.array([0, 2]))
    params = list(net.parameters())

    def loss_fn(inp: mr.Tensor, *weights: mr.Tensor) -> mr.Tensor:
        return F.cross_entropy(net(inp), labels)

    net_ok = mr.gradcheck(loss_fn, [images, *params], fast_mode=True, n_directions=5)
    print(f"gradcheck (fast mode) of a 2-conv Swish network, input and {len(params)} parameter tensors: {net_ok}")

    plot_error = plot(os.path.join(args.out, "swish.png"))
    print(f"max |backward - finite differences| on the plot's grid: {plot_error:.1e}")

    results = {"gradcheck": bool(ok), "property_passed": passed, "property_examples": tried,
               "buggy_gradcheck_caught": buggy_caught, "buggy_property_passed": buggy_passed,
               "buggy_message": message.splitlines()[0] if message else "", "network_gradcheck": bool(net_ok),
               "plot_max_error": plot_error}
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"figures and results in {args.out}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
