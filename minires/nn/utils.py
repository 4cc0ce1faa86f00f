"""Gradient clipping: ``clip_grad_norm_`` (by global norm) and ``clip_grad_value_``, as in PyTorch.

Both work in place on each parameter's ``.grad.data`` (same array, same dtype, same device) and
skip parameters whose ``.grad`` is None.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from minires import backend
from minires.autograd.grad_mode import no_grad
from minires.tensor import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _grads(parameters: Tensor | Iterable[Tensor]) -> list[Any]:
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    return [p.grad.data for p in params if p.grad is not None]


def _vector_norm(x: Any, norm_type: float) -> Any:
    """The ``norm_type``-norm of all entries of ``x`` as a 0-d array on x's device, in x's dtype."""
    xp = backend.xp_of(x)
    a = xp.abs(x.ravel())
    if a.size == 0:
        return xp.zeros((), dtype=x.dtype)
    if norm_type == math.inf:
        return a.max()
    if norm_type == -math.inf:
        return a.min()
    if norm_type == 0:
        return xp.asarray(xp.count_nonzero(a), dtype=x.dtype)
    if norm_type == 1:
        return a.sum()
    if norm_type == 2:
        return xp.sqrt(xp.dot(a, a))
    return (a**norm_type).sum() ** (1.0 / norm_type)


@no_grad()
def clip_grad_norm_(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> Tensor:
    """Scale all gradients together so that their global ``norm_type``-norm is at most ``max_norm``.

    The global norm is the norm of the per-parameter norms (for p=2: the 2-norm of all gradients
    concatenated). Every gradient is multiplied by ``min(1, max_norm / (total_norm + 1e-6))``.
    Returns the total norm *before* clipping as a 0-d Tensor (on the first gradient's device).
    ``error_if_nonfinite=True`` raises RuntimeError when that norm is nan or inf.
    """
    grads = _grads(parameters)
    max_norm, norm_type = float(max_norm), float(norm_type)
    if not grads:
        return Tensor(backend.xp_of().zeros((), dtype="float32"))
    device = backend.device_of(grads[0])
    xp = backend.xp_of(grads[0])
    norms = [backend.to_device(_vector_norm(g, norm_type), device) for g in grads]
    total = _vector_norm(xp.stack([n.astype(grads[0].dtype) for n in norms]), norm_type)
    if isinstance(total, np.generic):  # numpy reductions give scalars: make it a 0-d array on the device
        total = backend.to_device(np.asarray(total), device)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(
            f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is {float(total)}, "
            "so it cannot be clipped; pass error_if_nonfinite=False to scale by it anyway"
        )
    clip_coef = xp.minimum(max_norm / (total + 1e-6), 1.0).astype(total.dtype)
    for g in grads:
        g *= backend.to_device(clip_coef, backend.device_of(g))
    return Tensor(total)


@no_grad()
def clip_grad_value_(parameters: Tensor | Iterable[Tensor], clip_value: float) -> None:
    """Clamp every gradient entry into ``[-clip_value, clip_value]`` in place."""
    clip_value = float(clip_value)
    for g in _grads(parameters):
        backend.xp_of(g).clip(g, -clip_value, clip_value, out=g)
