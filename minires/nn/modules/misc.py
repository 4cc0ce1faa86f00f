"""Shape-only layers: ``Identity`` (returns its input) and ``Flatten`` (merges dims start_dim..end_dim)."""

from __future__ import annotations

from typing import Any

from minires.nn import functional as F
from minires.nn.modules.module import Module
from minires.tensor import Tensor


class Identity(Module):
    """Returns its input unchanged; any constructor arguments are accepted and ignored (as PyTorch)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, input: Any) -> Any:  # noqa: A002 - PyTorch's argument name
        return input


class Flatten(Module):
    """(N, C, H, W) -> (N, C*H*W) by default: flattens dims ``start_dim`` to ``end_dim``."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        return F.flatten(input, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
