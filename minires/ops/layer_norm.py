"""Per-sample normalisation: ``layer_norm`` (over the trailing ``normalized_shape`` dims) and
``group_norm`` (over channel groups and space), as PyTorch's.

Both are written with the differentiable ops (mean, var, sqrt, ...), so their backward is autograd's
and needs no separate derivation; unlike BatchNorm they keep no running statistics and behave the same
in training and evaluation.
"""

from __future__ import annotations

from typing import Sequence

from minires.ops._util import as_tensor, check_float
from minires.ops.reductions import mean, var
from minires.tensor import Tensor


def _normalize(x: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
    """(x - mean) / sqrt(var + eps) over ``dims``, with the biased variance (divide by n)."""
    centred = x - mean(x, dims, keepdim=True)
    return centred / (var(x, dims, keepdim=True, correction=0) + eps).sqrt()


def layer_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Normalise over the last ``len(normalized_shape)`` dims, which must equal ``normalized_shape``;
    then ``* weight + bias`` (each of that shape) when given. ``(*, *normalized_shape) -> same shape``."""
    x = as_tensor(x)
    check_float("layer_norm", x)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(int(s) for s in normalized_shape)
    k = len(shape)
    if k == 0 or x.ndim < k or tuple(x.shape[x.ndim - k :]) != shape:
        raise ValueError(
            f"layer_norm: normalized_shape {shape} must match the last dims of the input, got input shape {x.shape}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"layer_norm: {name} must have shape {shape}, got {tuple(t.shape)}")
    out = _normalize(x, tuple(range(x.ndim - k, x.ndim)), eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def group_norm(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Split the C channels of ``x (N, C, *)`` into ``num_groups`` groups and normalise each group of each
    sample over its channels and positions; then per-channel ``* weight + bias`` (shape (C,))."""
    x = as_tensor(x)
    check_float("group_norm", x)
    if x.ndim < 2:
        raise ValueError(f"group_norm: expected an input (N, C, *), got shape {x.shape}")
    n, c = x.shape[0], x.shape[1]
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1 or c % num_groups:
        raise ValueError(f"group_norm: num_groups must be a positive divisor of the {c} channels, got {num_groups!r}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (c,):
            raise ValueError(f"group_norm: {name} must have shape ({c},), got {tuple(t.shape)}")
    grouped = x.reshape(n, num_groups, -1)
    out = _normalize(grouped, (2,), eps).reshape(*x.shape)
    per_channel = (c,) + (1,) * (x.ndim - 2)
    if weight is not None:
        out = out * weight.reshape(*per_channel)
    if bias is not None:
        out = out + bias.reshape(*per_channel)
    return out


__all__ = ["group_norm", "layer_norm"]
