"""``Parameter``: a leaf Tensor that a Module registers as trainable state when assigned to it."""

from __future__ import annotations

from typing import Any

import numpy as np

from minires.tensor import DEFAULT_FLOAT, Tensor


class Parameter(Tensor):
    """A Tensor that requires grad by default and that ``Module.__setattr__`` registers as a parameter.

    ``Parameter(data)`` shares ``data``'s array (a Tensor's ``.data`` or a raw numpy/cupy array); it
    is always a leaf, even when made from a tensor that came out of an op.
    """

    def __init__(self, data: Any = None, requires_grad: bool = True) -> None:
        if data is None:
            data = np.empty((0,), dtype=DEFAULT_FLOAT)
        super().__init__(data.data if isinstance(data, Tensor) else data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()
