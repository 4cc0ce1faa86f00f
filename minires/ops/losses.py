"""Loss functions with PyTorch's semantics: nll_loss, cross_entropy (fused, stable) and mse_loss.

Class-index losses take scores (N, C) with targets (N,), or (N, C, d1, ...) with targets
(N, d1, ...); the class axis is always axis 1. ``reduction`` is "mean", "sum" or "none". With class
weights w, "mean" is PyTorch's weighted mean: sum_i w[t_i] loss_i / sum_i w[t_i] over the targets
that are not ``ignore_index``.
"""

from __future__ import annotations

import math
from typing import Any

from minires import backend
from minires.amp import cast_to_float32
from minires.autograd.function import Context, Function
from minires.backend import xp_of
from minires.ops._util import as_tensor, check_float, quiet
from minires.ops.activations import SoftmaxFunction
from minires.tensor import Tensor

REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(name: str, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of 'mean', 'sum', 'none', got {reduction!r}")


def _class_target(name: str, scores: Tensor, target: Any, ignore_index: int) -> Any:
    """Validate class-index targets against scores (N, C, *d) and return the raw integer array (N, *d)."""
    if isinstance(target, Tensor):
        if target.device != scores.device:
            raise RuntimeError(f"{name}: target is on {target.device}, input is on {scores.device}; move them to one device")
        t = target.data
    else:
        t = as_tensor(target).data
        if backend.device_of(t) != scores.device:
            raise RuntimeError(
                f"{name}: target is a {backend.device_of(t)} array, input is on {scores.device}; pass a Tensor on the input's device"
            )
    if t.dtype.kind not in "iu":
        raise TypeError(f"{name}: target must hold integer class indices (e.g. int64), got dtype {t.dtype}")
    if scores.ndim < 1:
        raise ValueError(f"{name}: input must be (N, C) or (N, C, d1, ...), got shape {scores.shape}")
    if scores.ndim == 1:  # a single sample (C,) with a 0-d target, as PyTorch allows
        expected = ()
    else:
        expected = (scores.shape[0],) + tuple(scores.shape[2:])
    if tuple(t.shape) != expected:
        raise ValueError(
            f"{name}: target has shape {tuple(t.shape)}, expected {expected} for input of shape {scores.shape} "
            "(input (N, C, d1, ...) takes target (N, d1, ...))"
        )
    c = scores.shape[1] if scores.ndim > 1 else scores.shape[0]
    bad = ((t < 0) | (t >= c)) & (t != ignore_index)
    if bool(bad.any()):
        value = int(t[bad].ravel()[0])
        raise IndexError(
            f"{name}: target {value} is out of bounds for {c} classes (expected 0 <= target < {c}, or ignore_index {ignore_index})"
        )
    return t


def _class_weight(name: str, weight: Any, scores: Tensor) -> Any:
    """The raw class-weight array (C,) in the scores' dtype, or None."""
    if weight is None:
        return None
    w = weight if isinstance(weight, Tensor) else as_tensor(weight)
    c = scores.shape[1] if scores.ndim > 1 else scores.shape[0]
    if tuple(w.shape) != (c,):
        raise ValueError(f"{name}: weight has shape {w.shape}, expected ({c},) for input of shape {scores.shape}")
    if w.device != scores.device:
        raise RuntimeError(f"{name}: weight is on {w.device}, input is on {scores.device}")
    return w.data.astype(scores.dtype, copy=False)


def _with_class_axis(a: Any, ndim: int) -> Any:
    """(N, *d) -> (N, 1, *d), so it broadcasts against (N, C, *d)."""
    return a[:, None] if ndim > 1 else a


def _pick(xp: Any, scores: Any, safe_target: Any) -> Any:
    """scores[n, target[n, *d], *d] -> (N, *d)."""
    if scores.ndim == 1:
        return scores[safe_target]
    return xp.take_along_axis(scores, safe_target[:, None], axis=1)[:, 0]


def _onehot(xp: Any, target: Any, c: int, ndim: int, dtype: Any) -> Any:
    """One-hot of integer targets (N, *d) along axis 1 -> (N, C, *d) in ``dtype``."""
    classes = xp.arange(c).reshape((c,) + (1,) * (ndim - 2)) if ndim > 1 else xp.arange(c)
    return (_with_class_axis(target, ndim) == classes).astype(dtype)


def _prepare_targets(xp: Any, target: Any, weight: Any, ignore_index: int, dtype: Any) -> tuple[Any, Any]:
    """(target with ignored entries set to class 0, per-element weight w[t] (0 where ignored))."""
    valid = target != ignore_index
    safe = xp.where(valid, target, 0)
    w_t = valid.astype(dtype) if weight is None else weight[safe] * valid
    return safe, w_t


def _total(a: Any) -> Any:
    """Sum of all elements as a (1,) array: stays an array of a's device (a 0-d reduction may not)."""
    return a.reshape(-1).sum(axis=0, keepdims=True)


def _reduce(xp: Any, losses: Any, reduction: str, denom: Any) -> Any:
    """Apply the reduction; a scalar result is a 0-d array in losses' dtype."""
    if reduction == "none":
        return losses
    total = _total(losses)
    if reduction == "mean":
        with quiet(xp):
            total = total / denom  # 0 / 0 (every target ignored) is nan, as PyTorch
    return total.astype(losses.dtype, copy=False).reshape(())


def _grad_scale(xp: Any, g: Any, reduction: str, denom: Any, ndim: int) -> Any:
    """The upstream gradient per element (N, 1, *d) (or a scalar) for the given reduction."""
    if reduction == "none":
        return _with_class_axis(g, ndim)
    if reduction == "sum":
        return g
    with quiet(xp):  # every target ignored (denom 0): the loss is nan, the gradient zero, as PyTorch
        scale = xp.where(denom == 0, 0, 1 / denom).astype(g.dtype, copy=False)
    return g * scale  # g may be a Tensor (create_graph): the scale is a constant array


class NLLLossFunction(Function):
    """loss_i = -w[t_i] * log_probs[i, t_i]; backward scatters -w[t_i] * scale into the picked entries.
    The loss is linear in log_probs, so the gradient is a constant times the upstream gradient."""

    @staticmethod
    def forward(ctx: Context, log_probs: Any, target: Any, weight: Any, ignore_index: int, reduction: str) -> Any:
        xp = xp_of(log_probs)
        dt = log_probs.dtype
        safe, w_t = _prepare_targets(xp, target, weight, ignore_index, dt)
        losses = -_pick(xp, log_probs, safe) * w_t
        denom = _total(w_t)
        ctx.save_for_backward(safe, w_t, denom)
        ctx.meta = (log_probs.shape, dt, reduction)
        return _reduce(xp, losses, reduction, denom)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None, None, None, None]:
        safe, w_t, denom = ctx.saved_tensors
        shape, dt, reduction = ctx.meta
        grad = _nll_coefficient(safe, w_t, shape, dt)
        grad *= _grad_scale(xp_of(g), g, reduction, denom, len(shape))
        return grad.astype(dt, copy=False), None, None, None, None

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor) -> tuple[Any, None, None, None, None]:
        safe, w_t, denom = ctx.saved_arrays
        shape, dt, reduction = ctx.meta
        scale = _grad_scale(xp_of(safe), g, reduction, denom, len(shape))
        return scale * _nll_coefficient(safe, w_t, shape, dt), None, None, None, None


def _nll_coefficient(safe: Any, w_t: Any, shape: tuple[int, ...], dt: Any) -> Any:
    """d loss_i / d log_probs before the reduction's scale: -w[t_i] at the target class, 0 elsewhere."""
    ndim = len(shape)
    c = shape[1] if ndim > 1 else shape[0]
    grad = _onehot(xp_of(safe), safe, c, ndim, dt)
    grad *= -_with_class_axis(w_t, ndim)
    return grad


class CrossEntropy(Function):
    """Fused log_softmax + nll with label smoothing eps and class weights w (PyTorch's formula).

    Per element i (not ignored), with target weights q_ic = (1 - eps) w[t_i] [c == t_i] + eps / C w_c::

        loss_i = -sum_c q_ic log_softmax(z_i)_c
        dloss_i / dz_i = softmax(z_i) * sum_c q_ic - q_i          (softmax - smoothed one-hot if w = 1)

    "mean" divides by sum_i w[t_i] (the count of targets without weights), as PyTorch does for
    both the nll and the smoothing term.
    """

    @staticmethod
    def forward(
        ctx: Context,
        logits: Any,
        target: Any,
        weight: Any,
        ignore_index: int,
        reduction: str,
        label_smoothing: float,
    ) -> Any:
        xp = xp_of(logits)
        dt = logits.dtype
        ndim = logits.ndim
        axis = 1 if ndim > 1 else 0
        c = logits.shape[axis]
        safe, w_t = _prepare_targets(xp, target, weight, ignore_index, dt)
        valid = target != ignore_index
        shifted = logits - logits.max(axis=axis, keepdims=True)
        probs = xp.exp(shifted)
        sums = probs.sum(axis=axis, keepdims=True)
        lse = xp.log(sums)
        probs /= sums  # softmax, kept for backward
        lse = lse[:, 0] if ndim > 1 else lse[0]
        picked_logp = _pick(xp, shifted, safe) - lse
        eps = dt.type(label_smoothing)
        losses = -(1 - eps) * w_t * picked_logp
        if label_smoothing > 0:
            if weight is None:
                smooth = -(shifted.sum(axis=axis) - c * lse)
            else:
                w_b = weight.reshape((c,) + (1,) * (ndim - 2)) if ndim > 1 else weight
                smooth = -((shifted * w_b).sum(axis=axis) - weight.sum() * lse)
            losses = losses + (eps / c) * smooth * valid
        denom = _total(w_t)
        ctx.save_for_backward(probs, safe, w_t, valid, weight, denom, logits)
        ctx.meta = (dt, reduction, float(label_smoothing))
        return _reduce(xp, losses, reduction, denom)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None, None, None, None, None]:
        probs, _, _, _, _, denom, _ = ctx.saved_tensors
        dt, reduction, _ = ctx.meta
        row_total, offset = _cross_entropy_terms(ctx.saved_tensors, ctx.meta)
        grad = probs * row_total
        grad += offset
        grad *= _grad_scale(xp_of(g), g, reduction, denom, probs.ndim)
        return grad.astype(dt, copy=False), None, None, None, None, None

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor) -> tuple[Any, None, None, None, None, None]:
        # softmax(logits) is the only part that depends on the logits; the rest are constants
        saved = ctx.saved_arrays
        _, reduction, _ = ctx.meta
        logits = ctx.saved_tensor(6)
        probs = SoftmaxFunction.apply(logits, 1 if logits.ndim > 1 else 0)
        row_total, offset = _cross_entropy_terms(saved, ctx.meta)
        scale = _grad_scale(xp_of(saved[0]), g, reduction, saved[5], logits.ndim)
        return (probs * row_total + offset) * scale, None, None, None, None, None


def _cross_entropy_terms(saved: tuple[Any, ...], meta: tuple[Any, ...]) -> tuple[Any, Any]:
    """(sum_c q_ic, -q_i) with the target weights q of :class:`CrossEntropy`'s docstring, so that
    d loss_i / d z_i = softmax(z_i) * sum_c q_ic - q_i before the reduction's scale."""
    probs, safe, w_t, valid, weight, _, _ = saved
    dt, _, label_smoothing = meta
    xp = xp_of(probs)
    ndim = probs.ndim
    c = probs.shape[1] if ndim > 1 else probs.shape[0]
    eps = dt.type(label_smoothing)
    hard = _with_class_axis((1 - eps) * w_t, ndim)
    valid_b = _with_class_axis(valid, ndim)
    offset = _onehot(xp, safe, c, ndim, dt)
    offset *= -hard
    if weight is None:
        row_total = hard + (eps * valid_b).astype(dt)
        if label_smoothing > 0:
            offset -= (eps / c) * valid_b
    else:
        w_b = weight.reshape((c,) + (1,) * (ndim - 2)) if ndim > 1 else weight
        row_total = hard + (eps * weight.mean()) * valid_b
        if label_smoothing > 0:
            offset -= (eps / c) * w_b * valid_b
    return row_total, offset


class MSELossFunction(Function):
    """loss = (input - target)^2, reduced; gradients 2 (input - target) * scale for both operands.
    Saves the operands themselves (not their difference) so the backward also runs on Tensors."""

    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, x: Any, target: Any, reduction: str) -> Any:
        xp = xp_of(x, target)
        diff = x - target
        ctx.save_for_backward(x, target)
        ctx.reduction = reduction
        sq = diff * diff
        return _reduce(xp, sq, reduction, diff.dtype.type(diff.size))

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any, None]:
        x, target = ctx.saved_tensors
        diff = x - target
        scale = g if ctx.reduction != "mean" else g / diff.dtype.type(math.prod(diff.shape))
        gx = 2 * diff * scale
        gt = -gx if ctx.needs_input_grad[1] else None
        return (gx if ctx.needs_input_grad[0] else None), gt, None


def nll_loss(
    log_probs: Tensor,
    target: Any,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Negative log-likelihood of integer targets: log_probs (N, C) or (N, C, d1, ...), target (N,) or
    (N, d1, ...). "mean" is the weighted mean sum_i w[t_i] loss_i / sum_i w[t_i]; "none" gives (N, d1, ...)."""
    name = "nll_loss"
    _check_reduction(name, reduction)
    log_probs = as_tensor(log_probs)
    check_float(name, log_probs)
    t = _class_target(name, log_probs, target, ignore_index)
    w = _class_weight(name, weight, log_probs)
    return NLLLossFunction.apply(log_probs, t, w, int(ignore_index), reduction)


def cross_entropy(
    logits: Tensor,
    target: Any,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross entropy of unnormalised scores (N, C) or (N, C, d1, ...) against integer targets (N,) or
    (N, d1, ...), i.e. nll_loss(log_softmax(logits, 1), target), fused and numerically stable.

    With ``label_smoothing`` eps the target becomes (1 - eps) one-hot + eps / C uniform (PyTorch's
    formula, class weights applied to both parts). Only class-index targets are supported.
    """
    name = "cross_entropy"
    _check_reduction(name, reduction)
    (logits,) = cast_to_float32(as_tensor(logits))  # float32 log-sum-exp under autocast
    check_float(name, logits)
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"{name}: label_smoothing must be between 0 and 1, got {label_smoothing}")
    t = _class_target(name, logits, target, ignore_index)
    w = _class_weight(name, weight, logits)
    return CrossEntropy.apply(logits, t, w, int(ignore_index), reduction, float(label_smoothing))


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:  # noqa: A002 - PyTorch's name
    """Mean squared error between input and target of the same shape; "none" keeps the shape."""
    name = "mse_loss"
    _check_reduction(name, reduction)
    x = as_tensor(input)
    check_float(name, x)
    y = as_tensor(target, like=x)
    x, y = cast_to_float32(x, y)  # float32 under autocast
    if tuple(x.shape) != tuple(y.shape):
        raise ValueError(f"{name}: input has shape {x.shape} but target has shape {y.shape}; expected the same shape")
    if y.dtype != x.dtype:
        raise TypeError(f"{name}: input is {x.dtype} but target is {y.dtype}; expected the same dtype")
    return MSELossFunction.apply(x, y, reduction)
