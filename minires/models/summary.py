"""``summary(model, input_shape)``: a layer-by-layer table of output shapes, parameters and MACs.

It runs one forward pass (under ``no_grad``, in eval mode, on zeros) with a forward hook on every leaf
module (a module with no children, plus every :class:`~minires.models.blocks.ResidualAdd`), and records
one row per *call*: a module used twice, like a block's shared ``relu``, gives two rows.

Counting rules (multiply-accumulates, MACs; one MAC = one multiply and one add):

- ``Conv2d``: output elements x ``C_in / groups`` x ``kH`` x ``kW`` (the bias is not counted);
- ``Linear``: output elements x ``in_features``;
- everything else -- BatchNorm, ReLU, pooling, the residual add, option-A shortcuts -- is elementwise
  or data movement and counts 0 MACs.

Numbers are for the batch in ``input_shape``; use batch 1 for the per-image figures papers quote
(resnet18 at 224x224: 1.82 GMACs; resnet50: 4.1 GMACs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

import minires.nn as nn
from minires.autograd.grad_mode import no_grad
from minires.creation import zeros
from minires.models.blocks import ResidualAdd
from minires.tensor import Tensor


@dataclass
class LayerSummary:
    """One call of one leaf module: its dotted name, class, output shape, own parameters and MACs."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass
class ModelSummary:
    """What :func:`summary` returns; ``str(result)`` is the printed table."""

    input_shape: tuple[int, ...]
    layers: list[LayerSummary] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    total_macs: int = 0

    def table(self) -> str:
        """The table as text: one row per layer call, then the totals."""
        headers = ("Layer", "Type", "Output shape", "Params", "MACs")
        rows = [(r.name, r.kind, str(tuple(r.output_shape)), f"{r.params:,}", f"{r.macs:,}") for r in self.layers]
        widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]

        def fmt(cells: Sequence[str]) -> str:
            left = [c.ljust(w) for c, w in zip(cells[:3], widths[:3])]
            right = [c.rjust(w) for c, w in zip(cells[3:], widths[3:])]
            return "  ".join(left + right)

        rule = "-" * len(fmt(headers))
        lines = [f"Input shape: {tuple(self.input_shape)}", rule, fmt(headers), rule]
        lines += [fmt(row) for row in rows]
        lines += [
            rule,
            f"Total params:      {self.total_params:,}",
            f"Trainable params:  {self.trainable_params:,}",
            f"Non-trainable:     {self.total_params - self.trainable_params:,}",
            f"Total MACs:        {self.total_macs:,} ({self.total_macs / 1e9:.3f} G)",
            "MACs: conv and linear only; BatchNorm, ReLU, pooling and residual adds count 0.",
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _macs(module: nn.Module, output: Tensor) -> int:
    """Multiply-accumulates of one call: conv and linear from their weight shape, 0 for the rest."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        # Conv2d weight (C_out, C_in / groups, kH, kW); Linear weight (out, in): each output element
        # is a dot product of length prod(weight.shape[1:]).
        return int(output.numel()) * int(np.prod(module.weight.shape[1:]))
    return 0


def _is_leaf(module: nn.Module) -> bool:
    return isinstance(module, ResidualAdd) or next(iter(module.children()), None) is None


def summary(model: nn.Module, input_shape: Sequence[int], verbose: bool = True, dtype: Any = None) -> ModelSummary:
    """Run ``model`` once on zeros of ``input_shape`` (batch included, e.g. ``(1, 3, 224, 224)``) and
    tabulate each leaf layer's output shape, parameters and MACs, with totals.

    Prints the table when ``verbose``; returns a :class:`ModelSummary` either way. The model runs in eval
    mode under ``no_grad`` and is put back in the mode it was in. ``dtype`` defaults to the model's
    parameter dtype; the input is made on the parameters' device.
    """
    input_shape = tuple(int(s) for s in input_shape)
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else "cpu"
    dtype = dtype if dtype is not None else (first.dtype if first is not None else None)
    result = ModelSummary(input_shape=input_shape)
    names = {id(m): name for name, m in model.named_modules()}

    def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        shape = tuple(output.shape) if isinstance(output, Tensor) else ()
        params = sum(p.numel() for p in module.parameters(recurse=False))
        macs = _macs(module, output) if isinstance(output, Tensor) else 0
        result.layers.append(LayerSummary(names.get(id(module)) or type(module).__name__, type(module).__name__, shape, params, macs))

    handles = [m.register_forward_hook(record) for m in model.modules() if _is_leaf(m)]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with no_grad():
            model(zeros(*input_shape, dtype=dtype, device=device))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode

    result.total_params = sum(p.numel() for p in model.parameters())
    result.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result.total_macs = sum(r.macs for r in result.layers)
    if verbose:
        print(result.table())
    return result


__all__ = ["LayerSummary", "ModelSummary", "summary"]
