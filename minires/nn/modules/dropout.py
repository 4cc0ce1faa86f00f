"""``Dropout``: zero elements with probability p in training (scaling the rest by 1/(1-p)); identity in eval."""

from __future__ import annotations

from minires.nn import functional as F
from minires.nn.modules.module import Module
from minires.tensor import Tensor


class Dropout(Module):
    """Inverted dropout, active only while ``self.training`` (so ``model.eval()`` turns it off)."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p
        self.inplace = inplace

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - PyTorch's argument name
        return F.dropout(input, self.p, self.training, self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"
