"""In-place changes of a Tensor (``x += y``, ``x.add_(y)``, ``x[i] = v``, ...) with PyTorch's autograd rules.

* Nothing to record (grad mode off, or nothing involved requires grad): the array is overwritten in
  place and the version counter bumped. That is how optimizers and hand-written SGD update leaves under
  ``no_grad``.
* A leaf that requires grad refuses, with PyTorch's message.
* A tensor inside the graph is *rebased*: the out-of-place op is recorded on a copy of the old value
  (so ops that saved the old value keep it) and the tensor becomes that node's output, written into its
  own array. Backward then sees the old value's graph plus the change: exact gradients.
* minires does not regenerate views as PyTorch's CopySlices does, so a recorded in-place op on a view,
  or on a tensor whose views take part in autograd, raises rather than leave a graph out of date.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from minires import backend
from minires.autograd.grad_mode import is_grad_enabled, no_grad

if TYPE_CHECKING:
    from minires.tensor import Tensor

LEAF_INPLACE_ERROR = "a leaf Variable that requires grad is being used in an in-place operation."


def apply_inplace(t: Tensor, name: str, compute: Callable[..., Tensor], *others: Any) -> Tensor:
    """Set ``t``'s data to ``compute(t, *others)`` (an out-of-place op) in place; returns ``t``."""
    from minires.tensor import Tensor

    record = is_grad_enabled() and (t.requires_grad or any(isinstance(o, Tensor) and o.requires_grad for o in others))
    if record and t.requires_grad and t.grad_fn is None:
        raise RuntimeError(LEAF_INPLACE_ERROR)
    if not record:
        with no_grad():
            result = compute(t, *others)
        write(t, name, result.data)
        return t
    _check_rebase(t, name)
    old = Tensor._from_array(backend.xp_of(t.data).array(t.data, copy=True))
    old.requires_grad, old.grad_fn, old._output_index = t.requires_grad, t.grad_fn, t._output_index
    result = compute(old, *others)
    if result.dtype != t.dtype:
        write(t, name, result.data)  # raises on a cast across kinds
        result = result.to(dtype=t.dtype)
    write(t, name, result.data)
    t.requires_grad, t.grad_fn, t._output_index = True, result.grad_fn, result._output_index
    t._retains_grad = False
    return t


def write(t: Tensor, name: str, values: Any) -> None:
    """Copy ``values`` into ``t.data`` (same shape; a cast only within the same kind) and bump the version."""
    if tuple(values.shape) != t.shape:
        raise RuntimeError(
            f"{name}: the result has shape {tuple(values.shape)}, which does not match the tensor's shape "
            f"{t.shape} (an in-place op cannot change the shape)"
        )
    if values.dtype != t.dtype and not np.can_cast(values.dtype, t.dtype, casting="same_kind"):
        raise RuntimeError(f"{name}: result type {values.dtype} can't be cast to the desired output type {t.dtype}")
    try:
        t.data[...] = values
    except ValueError as exc:  # e.g. the read-only broadcast view expand() makes
        raise RuntimeError(f"{name}: cannot write into this tensor's data ({exc}); clone() it first") from None
    t._vc.version += 1


def _check_rebase(t: Tensor, name: str) -> None:
    """Refuse a recorded in-place op that would leave a view's graph out of date."""
    if t._base is not None:
        if t._base.requires_grad and t._base.grad_fn is None:
            raise RuntimeError("a view of a leaf Variable that requires grad is being used in an in-place operation.")
        raise RuntimeError(
            f"{name}: in-place change of a view (shape {t.shape}) of a tensor that takes part in autograd; "
            "minires does not record it. Use an out-of-place op, or change a clone()."
        )
    live = [v for v in (ref() for ref in t._vc.views) if v is not None and v is not t]
    if live:
        raise RuntimeError(
            f"{name}: in-place change of a tensor (shape {t.shape}) that has views taking part in autograd "
            f"(e.g. one of shape {live[0].shape}); their graphs would be out of date. Use an out-of-place op."
        )
