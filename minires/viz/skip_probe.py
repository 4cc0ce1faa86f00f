"""Skip probe: for every residual block, the gradient arriving through the identity path and the branch.

A residual block computes ``y = F(x) + s(x)`` (then, in the original ResNet, a ReLU), with ``s`` the
identity or a shortcut. By the chain rule the gradient reaching the block input is the sum of two
terms, one per path::

    dL/dx = s'(x)^T dL/dy  +  F'(x)^T dL/dy          (for s = identity: dL/dy . (1 + dF/dx))
            \\____________/     \\____________/
            identity path       residual branch

The engine adds the two terms when both arrive at ``x``; the probe reads them *before* they are added.
It puts a pass-through op (:class:`ProbeTap`, forward and backward both the identity) on each path,
right where the path starts, and hooks the gradient leaving each tap:

- the branch tap sits on the input of the branch's first module (``conv1``, or ``bn1`` in a
  pre-activation block), through a forward pre-hook on that module;
- the identity tap sits on the input of ``downsample`` when the block has one, otherwise on the
  identity operand of the block's :class:`~minires.models.ResidualAdd`.

A tensor hook on the block input itself gives the engine's own sum, ``dL/dx``, and a hook on the add's
output gives ``dL/dy``. The taps change no number: the engine adds the same two arrays either way.

In a pre-activation block whose shortcut changes shape (a projection, or option A in the CIFAR nets)
both paths start after ``relu(bn1(x))``; there the probe splits the gradient at that tensor
(``split_at`` says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

import minires.nn as nn
from minires.autograd.function import Context, Function
from minires.backend import to_numpy
from minires.models.blocks import OptionAShortcut, ResidualAdd
from minires.tensor import Tensor


class ProbeTap(Function):
    """``y = x`` with ``dL/dx = dL/dy``: a graph node of its own, so a hook on ``y`` sees one path's gradient."""

    differentiable_backward = True  # the identity: its backward works on Tensors as well

    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        return x

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Any:
        return grad


def _norm(array: np.ndarray) -> float:
    return float(np.sqrt(np.sum(np.square(array.astype(np.float64)))))


@dataclass
class SkipRecord:
    """One block's gradients from the last backward (host arrays, in the model's dtype)."""

    block: str
    shortcut: str  # "identity", "option A" (subsample + zero channels) or "projection"
    split_at: str  # the tensor where the two paths part: "x" (block input) or "relu(bn1(x))"
    identity_grad: np.ndarray  # gradient reaching the split point through the shortcut
    branch_grad: np.ndarray  # ... through the residual branch F
    total_grad: np.ndarray  # dL/d(split point) as the engine summed it
    out_grad: np.ndarray  # dL/dy at the output of the residual add

    @property
    def identity_norm(self) -> float:
        return _norm(self.identity_grad)

    @property
    def branch_norm(self) -> float:
        return _norm(self.branch_grad)

    @property
    def total_norm(self) -> float:
        return _norm(self.total_grad)

    @property
    def out_norm(self) -> float:
        return _norm(self.out_grad)

    @property
    def ratio(self) -> float:
        """|branch| / |identity|: how much the residual branch adds to the gradient the skip carries."""
        identity = self.identity_norm
        return self.branch_norm / identity if identity > 0 else math.inf

    @property
    def cosine(self) -> float:
        """Cosine between the two contributions (1: same direction, 0: orthogonal, -1: cancelling)."""
        a = self.identity_grad.astype(np.float64).ravel()
        b = self.branch_grad.astype(np.float64).ravel()
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        return float(a @ b / denom) if denom > 0 else math.nan

    def as_dict(self) -> dict[str, Any]:
        """The table row: names and norms, no arrays."""
        return {
            "block": self.block, "shortcut": self.shortcut, "split_at": self.split_at,
            "out_norm": self.out_norm, "identity_norm": self.identity_norm, "branch_norm": self.branch_norm,
            "total_norm": self.total_norm, "ratio": self.ratio, "cosine": self.cosine,
        }


def _shortcut_kind(block: nn.Module) -> str:
    downsample = getattr(block, "downsample", None)
    if downsample is None:
        return "identity"
    return "option A" if isinstance(downsample, OptionAShortcut) else "projection"


class _BlockProbe:
    """The hooks of one block and what they caught during the last forward/backward."""

    def __init__(self, name: str, block: nn.Module) -> None:
        self.name = name or "block"
        self.block = block
        self.shortcut = _shortcut_kind(block)
        self.preact = bool(getattr(block, "preact", False))
        shortcut_after_preact = self.preact and block.downsample is not None
        self.split_at = "relu(bn1(x))" if shortcut_after_preact else "x"
        self.branch_entry: nn.Module = block.bn1 if (self.preact and not shortcut_after_preact) else block.conv1
        self.handles: list[Any] = []
        self.reset()

    def reset(self) -> None:
        self.branch_input: Tensor | None = None
        self.shortcut_input: Tensor | None = None
        self.grads: dict[str, np.ndarray] = {}

    def _tap(self, tensor: Tensor, key: str) -> Tensor:
        tapped = ProbeTap.apply(tensor)

        def hook(grad: Tensor) -> None:
            self.grads[key] = to_numpy(grad.data).copy()

        tapped.register_hook(hook)
        return tapped

    def _capture(self, tensor: Tensor, key: str) -> None:
        def hook(grad: Tensor) -> None:
            self.grads[key] = to_numpy(grad.data).copy()

        tensor.register_hook(hook)

    def install(self) -> None:
        block = self.block

        def on_block(module: nn.Module, args: tuple[Any, ...]) -> None:
            self.reset()

        def on_branch(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            x = args[0]
            if not (isinstance(x, Tensor) and x.requires_grad) or self.branch_input is not None:
                return None
            self.branch_input = x
            return (self._tap(x, "branch"), *args[1:])

        def on_downsample(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            x = args[0]
            if not (isinstance(x, Tensor) and x.requires_grad):
                return None
            self.shortcut_input = x
            return (self._tap(x, "identity"), *args[1:])

        def on_add_inputs(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            branch_out, identity = args
            if block.downsample is not None or not identity.requires_grad:
                return None
            self.shortcut_input = identity
            return (branch_out, self._tap(identity, "identity"))

        def on_add_output(module: nn.Module, args: tuple[Any, ...], summed: Tensor) -> None:
            if self.branch_input is None or self.shortcut_input is None:
                return
            if self.branch_input is not self.shortcut_input:
                raise RuntimeError(
                    f"SkipProbe: in block {self.name!r} the branch ({type(self.branch_entry).__name__}) and the shortcut "
                    "start from different tensors, so the probe cannot split the gradient at one point"
                )
            self._capture(self.branch_input, "total")
            self._capture(summed, "out")

        self.handles.append(block.register_forward_pre_hook(on_block))
        self.handles.append(self.branch_entry.register_forward_pre_hook(on_branch))
        if block.downsample is not None:
            self.handles.append(block.downsample.register_forward_pre_hook(on_downsample))
        self.handles.append(block.add.register_forward_pre_hook(on_add_inputs))
        self.handles.append(block.add.register_forward_hook(on_add_output))

    def record(self) -> SkipRecord | None:
        if not all(k in self.grads for k in ("identity", "branch", "total", "out")):
            return None
        g = self.grads
        return SkipRecord(self.name, self.shortcut, self.split_at, g["identity"], g["branch"], g["total"], g["out"])


class SkipProbe:
    """Watch every residual block of ``model`` (every module whose ``add`` is a :class:`ResidualAdd`).

    Run a forward and a backward, then read :meth:`records` (arrays and norms per block, in forward
    order) or :meth:`table` (one dict per block). Plain networks have no residual add, so there is
    nothing to probe: the constructor raises ValueError. ``remove()`` takes the hooks out.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.blocks = [
            _BlockProbe(name, module)
            for name, module in model.named_modules()
            if isinstance(getattr(module, "add", None), ResidualAdd)
        ]
        if not self.blocks:
            raise ValueError(
                f"SkipProbe: {type(model).__name__} has no residual blocks (no submodule with a ResidualAdd 'add'); "
                "a plain=True network has no skip connections to probe"
            )
        for probe in self.blocks:
            probe.install()

    def records(self) -> list[SkipRecord]:
        """Per block, the gradients of the last backward (blocks that backward did not reach are left out)."""
        return [r for r in (p.record() for p in self.blocks) if r is not None]

    def table(self) -> list[dict[str, Any]]:
        """Per block: block, shortcut, split_at, out_norm, identity_norm, branch_norm, total_norm, ratio, cosine."""
        return [r.as_dict() for r in self.records()]

    def format_table(self) -> str:
        return format_skip_table(self.table())

    def remove(self) -> None:
        for probe in self.blocks:
            for handle in probe.handles:
                handle.remove()
            probe.handles = []

    def __enter__(self) -> SkipProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def format_skip_table(rows: list[dict[str, Any]]) -> str:
    """The probe's table as aligned text: one line per block, norms in scientific notation."""
    header = f"{'block':<14} {'shortcut':<10} {'|dL/dy|':>10} {'|identity|':>11} {'|branch|':>10} {'|dL/dx|':>10} " \
             f"{'branch/id':>9} {'cos':>6}"
    lines = [header, "-" * len(header)]
    for r in rows:
        name = r["block"] if r["split_at"] == "x" else r["block"] + "*"
        lines.append(
            f"{name:<14} {r['shortcut']:<10} {r['out_norm']:>10.3e} {r['identity_norm']:>11.3e} {r['branch_norm']:>10.3e} "
            f"{r['total_norm']:>10.3e} {r['ratio']:>9.3f} {r['cosine']:>6.2f}"
        )
    kinds = sorted({r["shortcut"] for r in rows if r["split_at"] != "x"})
    if kinds:
        lines.append(f"* paths split after relu(bn1(x)): a pre-activation block whose {' or '.join(kinds)} shortcut "
                     "reads the pre-activated input")
    return "\n".join(lines)
