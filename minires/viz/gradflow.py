"""Gradient flow: per-layer gradient norms captured during backward, in the order of the forward pass.

:class:`GradientFlowRecorder` hooks every layer of the chosen types (convolutions and linear layers by
default) in two ways:

- a *forward hook* on the module registers a tensor hook on the module's output, so backward reports
  ``|dL/d output|``, the gradient arriving at that layer from above;
- a tensor hook on the module's ``weight`` reports ``|dL/dW|``, the gradient the optimizer will use
  (the same number as ``module.weight.grad`` after one backward from zeroed gradients).

The forward hooks also note the order in which layers run, so "depth" means position in the forward
pass (which is not always the registration order: a ResNet's shortcut is registered after its
branch). Typical use::

    rec = GradientFlowRecorder(model)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    plot_gradient_flow(rec.records(), "gradflow.png")
    rec.remove()
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

import minires.nn as nn
from minires.backend import to_numpy
from minires.tensor import Tensor
from minires.viz._plot import new_figure


def _norm(array: Any) -> float:
    return float(np.sqrt(np.sum(np.square(to_numpy(array).astype(np.float64)))))


@dataclass
class LayerGradient:
    """One layer's numbers from the last forward/backward: depth is its position in the forward pass."""

    depth: int
    name: str
    kind: str
    weight_grad_norm: float  # |dL/dW| (nan for a layer without a weight)
    weight_norm: float  # |W|, for the relative size |dL/dW| / |W|
    output_grad_norm: float  # |dL/d output| summed over the batch (nan if backward has not reached it)
    output_norm: float  # |output| from the forward pass
    numel: int  # elements of the output, so norms can be turned into RMS values

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class GradientFlowRecorder:
    """Record gradient norms of every layer of ``layer_types`` in ``model`` during backward.

    Values describe the most recent forward + backward; call ``records()`` after ``backward()``. A
    module called more than once in one forward pass (a shared ``ReLU``, say) gets one entry per call,
    named ``name#2``, ``name#3``... ``remove()`` (or leaving a ``with`` block) takes every hook out.
    """

    def __init__(self, model: nn.Module, layer_types: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> None:
        self.model = model
        self._handles: list[Any] = []
        self._tensor_handles: list[Any] = []  # hooks on the last forward's outputs
        self._order: list[str] = []  # entry names in forward order
        self._calls: dict[str, int] = {}
        self._entries: dict[str, dict[str, Any]] = {}
        self._weight_grads: dict[str, float] = {}
        self.layers = [(name, m) for name, m in model.named_modules() if isinstance(m, layer_types)]
        if not self.layers:
            kinds = ", ".join(t.__name__ for t in layer_types)
            raise ValueError(f"GradientFlowRecorder: the model has no layers of type {kinds}")
        self._handles.append(model.register_forward_pre_hook(self._start_forward))
        for name, module in self.layers:
            self._handles.append(module.register_forward_hook(self._make_forward_hook(name)))
            weight = getattr(module, "weight", None)
            if isinstance(weight, Tensor) and weight.requires_grad:
                self._handles.append(weight.register_hook(self._make_weight_hook(name)))

    def _start_forward(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        for handle in self._tensor_handles:  # a new forward pass: forget the previous graph's hooks
            handle.remove()
        self._tensor_handles = []
        self._order = []
        self._calls = {}
        self._entries = {}
        self._weight_grads = {}

    def _make_forward_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            count = self._calls.get(name, 0) + 1
            self._calls[name] = count
            entry_name = name if count == 1 else f"{name}#{count}"
            weight = getattr(module, "weight", None)
            entry = {
                "name": entry_name, "module": name, "kind": type(module).__name__,
                "weight_norm": _norm(weight.data) if isinstance(weight, Tensor) else math.nan,
                "output_norm": _norm(output.data), "numel": int(output.data.size), "output_grad_norm": math.nan,
            }
            self._entries[entry_name] = entry
            self._order.append(entry_name)
            if isinstance(output, Tensor) and output.requires_grad:
                def grad_hook(grad: Tensor) -> None:
                    entry["output_grad_norm"] = _norm(grad.data)
                self._tensor_handles.append(output.register_hook(grad_hook))
        return hook

    def _make_weight_hook(self, name: str) -> Any:
        def hook(grad: Tensor) -> None:
            self._weight_grads[name] = _norm(grad.data)
        return hook

    def records(self) -> list[LayerGradient]:
        """The layers of the last forward pass, in forward order, with their gradient norms."""
        out = []
        for depth, entry_name in enumerate(self._order):
            e = self._entries[entry_name]
            out.append(LayerGradient(
                depth=depth, name=entry_name, kind=e["kind"],
                weight_grad_norm=self._weight_grads.get(e["module"], math.nan), weight_norm=e["weight_norm"],
                output_grad_norm=e["output_grad_norm"], output_norm=e["output_norm"], numel=e["numel"],
            ))
        return out

    def remove(self) -> None:
        """Take every hook this recorder added out of the model and its tensors."""
        for handle in self._handles + self._tensor_handles:
            handle.remove()
        self._handles = []
        self._tensor_handles = []

    def __enter__(self) -> GradientFlowRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def plot_gradient_flow(
    records: Sequence[LayerGradient] | Mapping[str, Sequence[LayerGradient]],
    path: str | os.PathLike[str],
    title: str = "Gradient flow",
    quantity: str = "weight_grad_norm",
) -> str:
    """Plot a per-layer quantity against depth (log scale) and save it to ``path``; returns the path.

    ``records`` is one recorder's ``records()`` or ``{label: records}`` to overlay several models
    (plain vs residual, say). ``quantity`` is a field of :class:`LayerGradient`
    (``weight_grad_norm`` or ``output_grad_norm``, or ``output_norm`` for activations).
    """
    series = dict(records) if isinstance(records, Mapping) else {"": list(records)}
    fig, ax = new_figure(figsize=(7, 4))
    for label, recs in series.items():
        ys = [getattr(r, quantity) for r in recs]
        ax.plot([r.depth for r in recs], ys, marker="o", markersize=3, linewidth=1.2, label=label or None)
    ax.set_yscale("log")
    ax.set_xlabel("layer (position in the forward pass)")
    ax.set_ylabel(quantity.replace("_", " "))
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if any(series):
        ax.legend()
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, dpi=100)
    return path
