"""Batch normalisation: two Functions with closed-form backwards, for (N, C, *) inputs.

Per channel c over the M = N * prod(spatial) values that share it::

    y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c

:class:`BatchNormTrainFunction` uses the batch statistics (biased variance) and returns them;
:func:`batch_norm` then updates the running statistics in place, outside the differentiable core
(:func:`update_running_stats`; running_var with the unbiased variance, as PyTorch).
:class:`BatchNormEvalFunction` uses given statistics (the running ones), which makes the op affine in x.
The kernels view x as (N, C, K) with K = prod(spatial) so every per-channel statistic is one
reduction over axes (0, 2), and work in x's float dtype throughout.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minires.amp import cast_to_float32
from minires.autograd.function import Context, Function
from minires.backend import xp_of
from minires.ops import batch_norm_cpu
from minires.ops._util import as_tensor, check_float
from minires.ops.cuda import launch as cuda_launch
from minires.ops.cuda import use_fast_kernels
from minires.tensor import Tensor

# Blocks of roughly this many bytes keep the backward's in-place passes in cache (numpy only).
_BLOCK_BYTES = 1 << 22


def _channel_sum(xp: Any, a3: Any) -> Any:
    """Sum of an (N, C, K) array over axes (0, 2) -> (C,)."""
    return xp.einsum("nck->c", a3)


def _channel_dot(xp: Any, a3: Any, b3: Any) -> Any:
    """Per-channel dot product of two (N, C, K) arrays -> (C,)."""
    return xp.einsum("nck,nck->c", a3, b3)


def _blocks(xp: Any, a3: Any) -> list[slice]:
    """Slices over the batch axis; one block on the GPU, cache-sized blocks on numpy."""
    n = a3.shape[0]
    if xp is not np:
        return [slice(0, n)]
    per_sample = max(1, a3[0].nbytes)
    step = max(1, _BLOCK_BYTES // per_sample)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def batch_norm_apply(x3: Any, mean: Any, scale: Any, bias: Any, residual3: Any = None, relu: bool = False, centred: Any = None) -> Any:
    """``(x - mean) * scale + bias (+ residual) (then relu)`` per channel on (N, C, K) arrays -> a new (N, C, K) array.

    BN's normalise + affine step (``scale = weight * invstd``; ``bias`` may be None), optionally fused with
    a residual block's add and ReLU. On a GPU it is one fast kernel (``minires/ops/cuda``); otherwise array
    ops, in place on ``centred`` (an ``x - mean`` buffer the caller may hand over), block by block in cache.
    """
    if use_fast_kernels(x3, "batch_norm"):  # cuda arrays: one fused kernel; the code below is its reference
        zeros = bias if bias is not None else xp_of(x3).zeros_like(mean)
        return cuda_launch.bn_forward(x3, mean, scale, zeros, residual3, relu)
    if centred is None and batch_norm_cpu.usable(x3):  # channels-last numpy: long-row passes in cache
        return batch_norm_cpu.forward_eval(x3, mean, scale, bias, residual3, relu)
    xp = xp_of(x3)
    out = xp.subtract(x3, mean[:, None]) if centred is None else centred
    scale_col = scale[:, None]
    for b in _blocks(xp, x3):
        ob = out[b]
        ob *= scale_col
        if bias is not None:
            ob += bias[:, None]
        if residual3 is not None:
            ob += residual3[b]
        if relu:
            xp.maximum(ob, 0, out=ob)
    return out


def batch_norm_forward_train(
    x3: Any, weight: Any, bias: Any, eps: float, residual3: Any = None, relu: bool = False
) -> tuple[Any, Any, Any, Any]:
    """Training forward on x viewed as (N, C, K): returns (y3, mean, biased var, invstd), all x.dtype.

    Two passes for the statistics (mean, then the sum of squared deviations written straight into
    the output buffer), so a large mean does not cancel the variance away; then :func:`batch_norm_apply`
    (with the optional residual add and ReLU) in that buffer.
    """
    if batch_norm_cpu.usable(x3):  # channels-last numpy: the same passes on long rows, block by block in cache
        return batch_norm_cpu.forward_train(x3, weight, bias, eps, residual3, relu)
    xp = xp_of(x3)
    dt = x3.dtype
    m = x3.shape[0] * x3.shape[2]
    mean = (_channel_sum(xp, x3) / dt.type(m)).astype(dt, copy=False)
    out = xp.subtract(x3, mean[:, None])
    var = (_channel_dot(xp, out, out) / dt.type(m)).astype(dt, copy=False)
    invstd = (1 / xp.sqrt(var + dt.type(eps))).astype(dt, copy=False)
    scale = invstd if weight is None else invstd * weight
    return batch_norm_apply(x3, mean, scale, bias, residual3, relu, centred=out), mean, var, invstd


def batch_norm_backward_train(g3: Any, x3: Any, mean: Any, invstd: Any, weight: Any, need_x: bool) -> tuple[Any, Any, Any]:
    """Training backward: returns (dx3 or None, dweight = sum(g * x_hat), dbias = sum(g)).

    With x_hat = (x - mean) * invstd and k = weight * invstd::

        dx = k * (g - sum(g) / M - x_hat * sum(g * x_hat) / M)

    Pass 1 (per block): d = x - mean into the dx buffer, accumulating sum(g) and sum(g * d).
    Pass 2 (per block, in cache): d *= -invstd^2 sum(g d) / M; d += g; d -= sum(g) / M; d *= k.
    """
    xp = xp_of(g3, x3)
    dt = x3.dtype
    m = x3.shape[0] * x3.shape[2]
    blocks = _blocks(xp, x3)
    sum_g = xp.zeros_like(x3, shape=(x3.shape[1],))  # *_like: arrays of x's own type and device
    sum_gd = xp.zeros_like(sum_g)
    d = xp.empty_like(x3)
    mean_col = mean[:, None]
    for b in blocks:
        xp.subtract(x3[b], mean_col, out=d[b])
        sum_g += _channel_sum(xp, g3[b])
        sum_gd += _channel_dot(xp, g3[b], d[b])
    dweight = sum_gd * invstd
    if not need_x:
        return None, dweight, sum_g
    k = invstd if weight is None else invstd * weight
    if use_fast_kernels(x3, "batch_norm"):  # pass 2 as one fused kernel; the loop below is its reference
        return cuda_launch.bn_backward(g3, x3, mean, k, sum_g / dt.type(m), invstd * invstd * sum_gd / dt.type(m)), dweight, sum_g
    coef_d = (-(invstd * invstd) * sum_gd / dt.type(m))[:, None]
    shift = (-sum_g / dt.type(m))[:, None]
    k_col = k[:, None]
    for b in blocks:
        db = d[b]
        db *= coef_d
        db += g3[b]
        db += shift
        db *= k_col
    return d, dweight, sum_g


def batch_norm_backward_eval(
    g3: Any, x3: Any, mean: Any, invstd: Any, weight: Any, need_x: bool, need_w: bool, need_b: bool
) -> tuple[Any, Any, Any]:
    """Eval-mode backward (fixed statistics, so y is affine in x): (dx3, dweight, dbias), each None when not needed.

    ``dx = g * weight * invstd``, ``dweight = sum(g * (x - mean)) * invstd``, ``dbias = sum(g)``.
    """
    xp = xp_of(g3, x3)
    dx = dw = db = None
    if need_x:
        k = invstd if weight is None else invstd * weight
        dx = xp.multiply(g3, k[:, None])
    if need_w:  # sum(g * (x - mean)) block by block, so the difference stays in cache
        dw = sum(_channel_dot(xp, g3[b], x3[b] - mean[:, None]) for b in _blocks(xp, x3)) * invstd
    if need_b:
        db = _channel_sum(xp, g3)
    return dx, dw, db


def batch_norm_backward(
    g3: Any, x3: Any, mean: Any, invstd: Any, weight: Any, training: bool, needs: tuple[bool, bool, bool, bool], y3: Any = None
) -> tuple[Any, Any, Any, Any]:
    """Backward of BN, BN + ReLU or BN + add + ReLU on (N, C, K) arrays: (dx3, dweight, dbias, dresidual3).

    ``needs`` says which of (x, residual, weight, bias) want a gradient (None for the others). ``y3``: the
    op ended in a ReLU with that output, so the gradient first goes through its mask, ``g * (y > 0)``;
    that masked gradient is also the residual's. ``training``: the statistics were the batch's own.
    Channels-last NumPy arrays take :mod:`minires.ops.batch_norm_cpu`'s passes; the rest the code above.
    """
    need_x, need_r, need_w, need_b = needs
    if batch_norm_cpu.usable(x3):
        dx3, dw, db, dr3 = batch_norm_cpu.backward(g3, x3, mean, invstd, weight, training, y3, need_x, need_w or need_b, need_r)
    else:
        if y3 is not None:
            g3 = xp_of(g3).multiply(g3, y3 > 0)  # through the ReLU: the gradient of the sum
        dr3 = g3
        if training:
            dx3, dw, db = batch_norm_backward_train(g3, x3, mean, invstd, weight, need_x)
        else:
            dx3, dw, db = batch_norm_backward_eval(g3, x3, mean, invstd, weight, need_x, need_w, need_b)
    return dx3, (dw if need_w else None), (db if need_b else None), (dr3 if need_r else None)


def _check_input(name: str, x: Any) -> None:
    """x must be a float (N, C) or (N, C, *spatial) array or tensor."""
    check_float(name, x)
    if x.ndim < 2:
        raise ValueError(f"{name}: expected input of shape (N, C) or (N, C, *spatial), got shape {tuple(x.shape)}")


def _check_channel_vector(name: str, what: str, t: Any, x: Any) -> None:
    """``t`` (weight, bias, a statistic) is None or has shape (C,) for x's C channels (and, for
    tensors, sits on x's device)."""
    c = x.shape[1]
    if t is None:
        return
    if tuple(t.shape) != (c,):
        raise ValueError(
            f"{name}: {what} has shape {tuple(t.shape)}, expected ({c},) for input of shape {tuple(x.shape)} with {c} channels"
        )
    if isinstance(t, Tensor) and isinstance(x, Tensor) and t.device != x.device:
        raise RuntimeError(f"{name}: {what} is on {t.device}, input is on {x.device}; move them to one device")


def _check_batch_statistics(name: str, x: Any) -> None:
    """Batch statistics need more than one value per channel."""
    per_channel = x.size // max(x.shape[1], 1)
    if per_channel <= 1:
        raise ValueError(
            f"{name}: expected more than 1 value per channel when training, got input of shape {tuple(x.shape)} "
            f"({per_channel} value(s) for each of {x.shape[1]} channels)"
        )


def _as_dtype(a: Any, dtype: Any) -> Any:
    return None if a is None else a.astype(dtype, copy=False)


def batch_norm_grads_graph(
    x: Tensor, weight: Tensor | None, g: Tensor, needs: tuple[bool, bool, bool], eps: float, stats: Any = None
) -> tuple[Any, Any, Any]:
    """(dx, dweight, dbias) of batch norm written with Tensor ops, so they can be differentiated again.

    Training (``stats`` None): the statistics are recomputed from the Tensor x, so dx keeps its whole
    dependence on x through the batch mean and variance (the closed form of
    :func:`batch_norm_backward_train`, as a graph). Eval: ``stats = (mean, invstd)`` are raw (C,)
    constants and the op is affine in x. ``needs`` says which of the three to compute.
    """
    n, c = x.shape[:2]
    x3, g3 = x.reshape(n, c, -1), g.reshape(n, c, -1)
    axes = (0, 2)
    if stats is None:
        centred = x3 - x3.mean(axes, keepdim=True)
        invstd: Any = ((centred * centred).mean(axes, keepdim=True) + eps) ** -0.5
    else:
        mean, inv = stats
        centred, invstd = x3 - mean.reshape(1, c, 1), inv.reshape(1, c, 1)
    x_hat = centred * invstd
    dx = dw = db = None
    if needs[0]:
        k = invstd if weight is None else invstd * weight.reshape(1, c, 1)
        inner = g3 if stats is not None else g3 - g3.mean(axes, keepdim=True) - x_hat * (g3 * x_hat).mean(axes, keepdim=True)
        dx = (k * inner).reshape(x.shape)
    if needs[1]:
        dw = (g3 * x_hat).sum(axes)
    if needs[2]:
        db = g3.sum(axes)
    return dx, dw, db


class BatchNormTrainFunction(Function):
    """Normalise with the batch's own statistics: ``y = (x - mean_B) * invstd_B * weight + bias``.

    ``BatchNormTrainFunction.apply(x, weight, bias, eps) -> (y, mean, var)``: x (N, C, *), weight and
    bias (C,) or None; mean and the biased var (C,) are returned (not differentiable) so the caller can
    update running statistics; they are not touched here. Gradients go to x, weight and bias.
    """

    @staticmethod
    def forward(ctx: Context, x: Any, weight: Any, bias: Any, eps: float) -> tuple[Any, Any, Any]:
        name = "batch_norm"
        _check_input(name, x)
        _check_channel_vector(name, "weight", weight, x)
        _check_channel_vector(name, "bias", bias, x)
        _check_batch_statistics(name, x)
        x3 = x.reshape(x.shape[0], x.shape[1], -1)
        w = _as_dtype(weight, x.dtype)
        y3, mean, var, invstd = batch_norm_forward_train(x3, w, _as_dtype(bias, x.dtype), float(eps))
        ctx.x_shape, ctx.eps = x.shape, float(eps)
        ctx.save_for_backward(x3, mean, invstd, w)
        ctx.mark_non_differentiable(1, 2)
        return y3.reshape(x.shape), mean, var

    @staticmethod
    def backward(ctx: Context, g: Any, _mean: Any = None, _var: Any = None) -> tuple[Any, ...]:
        x3, mean, invstd, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dx3, dw, db, _ = batch_norm_backward(g.reshape(x3.shape), x3, mean, invstd, w, True, (need_x, False, need_w, need_b))
        return (None if dx3 is None else dx3.reshape(ctx.x_shape)), dw, db, None

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor, _mean: Any = None, _var: Any = None) -> tuple[Any, ...]:
        x3, _, _, w = ctx.saved_arrays
        x = ctx.input_tensor(0, x3.reshape(ctx.x_shape))
        weight = None if w is None else ctx.input_tensor(1, w)
        dx, dw, db = batch_norm_grads_graph(x, weight, g, ctx.needs_input_grad[:3], ctx.eps)
        return dx, dw, db, None


class BatchNormEvalFunction(Function):
    """Normalise with given statistics (eval mode): ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    ``BatchNormEvalFunction.apply(x, mean, var, weight, bias, eps)``: mean and var (C,) are fixed
    (typically the running statistics) and get no gradient, so y is affine in x with per-channel slope
    ``weight / sqrt(var + eps)``. Gradients go to x, weight and bias.
    """

    @staticmethod
    def forward(
        ctx: Context, x: Any, mean: Any, var: Any, weight: Any, bias: Any, eps: float
    ) -> Any:
        name = "batch_norm"
        _check_input(name, x)
        for what, t in (("running_mean", mean), ("running_var", var), ("weight", weight), ("bias", bias)):
            _check_channel_vector(name, what, t, x)
        x3 = x.reshape(x.shape[0], x.shape[1], -1)
        w, b = _as_dtype(weight, x.dtype), _as_dtype(bias, x.dtype)
        mean, invstd = _fixed_statistics(x.dtype, mean, var, eps)
        out = batch_norm_apply(x3, mean, invstd if w is None else invstd * w, b)
        ctx.x_shape = x.shape
        ctx.save_for_backward(x3, mean, invstd, w)
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, ...]:
        x3, mean, invstd, w = ctx.saved_tensors
        need_x, _, _, need_w, need_b, _ = ctx.needs_input_grad
        dx3, dw, db, _ = batch_norm_backward(g.reshape(x3.shape), x3, mean, invstd, w, False, (need_x, False, need_w, need_b))
        return None if dx3 is None else dx3.reshape(ctx.x_shape), None, None, dw, db, None

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor) -> tuple[Any, ...]:
        x3, mean, invstd, w = ctx.saved_arrays  # mean and invstd: the fixed statistics, constants here
        need_x, _, _, need_w, need_b, _ = ctx.needs_input_grad
        x = ctx.input_tensor(0, x3.reshape(ctx.x_shape))
        weight = None if w is None else ctx.input_tensor(3, w)
        dx, dw, db = batch_norm_grads_graph(x, weight, g, (need_x, need_w, need_b), 0.0, (mean, invstd))
        return dx, None, None, dw, db, None


def _fixed_statistics(dtype: Any, mean: Any, var: Any, eps: float) -> tuple[Any, Any]:
    """Eval mode's (mean, invstd) in x's dtype from given (running) mean and var."""
    xp = xp_of(mean)
    mean, var = mean.astype(dtype, copy=False), var.astype(dtype, copy=False)
    return mean, (1 / xp.sqrt(var + dtype.type(eps))).astype(dtype, copy=False)


def _fused_forward(
    ctx: Context, name: str, x: Any, residual: Any, weight: Any, bias: Any, mean: Any, var: Any, eps: float
) -> tuple[Any, Any, Any]:
    """Forward of the fused ops, ``relu(batch_norm(x) (+ residual))``: (y, mean, var); saves what backward needs.

    ``mean``/``var`` None: training (batch statistics, returned); given: eval (returned as given)."""
    _check_input(name, x)
    if residual is not None and tuple(residual.shape) != tuple(x.shape):
        raise ValueError(f"{name}: residual has shape {tuple(residual.shape)}, expected the input's shape {tuple(x.shape)}")
    for what, t in (("weight", weight), ("bias", bias), ("running_mean", mean), ("running_var", var)):
        _check_channel_vector(name, what, t, x)
    dt = x.dtype
    x3 = x.reshape(x.shape[0], x.shape[1], -1)
    r3 = None if residual is None else residual.astype(dt, copy=False).reshape(x3.shape)
    w, b = _as_dtype(weight, dt), _as_dtype(bias, dt)
    ctx.training, ctx.eps, ctx.x_shape = mean is None, float(eps), x.shape
    if ctx.training:
        _check_batch_statistics(name, x)
        y3, mean, var, invstd = batch_norm_forward_train(x3, w, b, float(eps), r3, relu=True)
    else:
        mean, invstd = _fixed_statistics(dt, mean, var, eps)
        var = var.astype(dt, copy=False)
        y3 = batch_norm_apply(x3, mean, invstd if w is None else invstd * w, b, r3, relu=True)
    ctx.save_for_backward(x3, y3, mean, invstd, w)
    ctx.mark_non_differentiable(1, 2)
    return y3.reshape(x.shape), mean, var


def _fused_backward(ctx: Context, g: Any, needs: tuple[bool, bool, bool, bool]) -> tuple[Any, Any, Any, Any]:
    """(dx, dresidual, dweight, dbias) of a fused op, shaped like x (None where not needed)."""
    x3, y3, mean, invstd, w = ctx.saved_tensors
    dx3, dw, db, dr3 = batch_norm_backward(g.reshape(x3.shape), x3, mean, invstd, w, ctx.training, needs, y3)
    shape = ctx.x_shape
    return (None if dx3 is None else dx3.reshape(shape)), (None if dr3 is None else dr3.reshape(shape)), dw, db


def _fused_backward_graph(ctx: Context, g: Tensor, needs: tuple[bool, bool, bool], weight_index: int) -> tuple[Any, Any, Any, Tensor]:
    """(dx, dweight, dbias, masked g) of a fused op as Tensor ops (differentiable again); the masked g is
    the residual's gradient. The ReLU's mask is a constant (its second derivative is 0 off the kink)."""
    x3, y3, mean, invstd, w = ctx.saved_arrays
    g = g * (y3.reshape(ctx.x_shape) > 0)
    x = ctx.input_tensor(0, x3.reshape(ctx.x_shape))
    weight = None if w is None else ctx.input_tensor(weight_index, w)
    stats = None if ctx.training else (mean, invstd)
    dx, dw, db = batch_norm_grads_graph(x, weight, g, needs, ctx.eps, stats)
    return dx, dw, db, g


class BatchNormReLUFunction(Function):
    """``relu(batch_norm(x))``: BN followed by ReLU (inside every residual branch) as one op.

    ``BatchNormReLUFunction.apply(x, weight, bias, mean, var, eps) -> (y, mean, var)``: x (N, C, *);
    weight, bias (C,) or None. With ``mean`` and ``var`` None it normalises with the batch statistics
    (training) and returns them (not differentiable) for the running-statistics update; given (eval), it
    normalises with them and returns them. It keeps only y for the ReLU (no mask), and on the CPU makes
    the normalise and the ReLU one pass over the data (a GPU kernel does the same). Gradients go to x,
    weight and bias.
    """

    @staticmethod
    def forward(ctx: Context, x: Any, weight: Any, bias: Any, mean: Any, var: Any, eps: float) -> tuple[Any, Any, Any]:
        return _fused_forward(ctx, "batch_norm_relu", x, None, weight, bias, mean, var, eps)

    @staticmethod
    def backward(ctx: Context, g: Any, _mean: Any = None, _var: Any = None) -> tuple[Any, ...]:
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dx, _, dw, db = _fused_backward(ctx, g, (need_x, False, need_w, need_b))
        return dx, dw, db, None, None, None

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor, _mean: Any = None, _var: Any = None) -> tuple[Any, ...]:
        dx, dw, db, _ = _fused_backward_graph(ctx, g, ctx.needs_input_grad[:3], weight_index=1)
        return dx, dw, db, None, None, None


class BatchNormAddReLUFunction(Function):
    """``relu(batch_norm(x) + residual)``: the tail of a post-activation residual block as one op.

    ``BatchNormAddReLUFunction.apply(x, residual, weight, bias, mean, var, eps) -> (y, mean, var)``: x and
    residual (N, C, *) of one shape; weight, bias (C,) or None. With ``mean`` and ``var`` None it
    normalises with the batch statistics (training) and returns them (not differentiable) for the
    running-statistics update; given (eval), it normalises with them and returns them. The normalise, add
    and ReLU are one pass over the data (a GPU kernel, or :mod:`minires.ops.batch_norm_cpu`'s blocks), and
    so is the backward's elementwise work. Gradients go to x, residual, weight and bias.
    """

    @staticmethod
    def forward(ctx: Context, x: Any, residual: Any, weight: Any, bias: Any, mean: Any, var: Any, eps: float) -> tuple[Any, Any, Any]:
        return _fused_forward(ctx, "batch_norm_add_relu", x, residual, weight, bias, mean, var, eps)

    @staticmethod
    def backward(ctx: Context, g: Any, _mean: Any = None, _var: Any = None) -> tuple[Any, ...]:
        dx, dr, dw, db = _fused_backward(ctx, g, ctx.needs_input_grad[:4])
        return dx, dr, dw, db, None, None, None

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor, _mean: Any = None, _var: Any = None) -> tuple[Any, ...]:
        need_x, need_r, need_w, need_b = ctx.needs_input_grad[:4]
        dx, dw, db, masked = _fused_backward_graph(ctx, g, (need_x, need_w, need_b), weight_index=2)
        return dx, (masked if need_r else None), dw, db, None, None, None


def update_running_stats(running_mean: Any, running_var: Any, mean: Any, var: Any, count: int, momentum: float) -> None:
    """``r = (1 - momentum) * r + momentum * batch_stat`` in place on raw (C,) arrays.

    ``var`` is the biased batch variance over ``count`` values per channel; running_var takes the
    unbiased one, ``var * count / (count - 1)``, as PyTorch. Not part of any autograd graph.
    """
    unbiased = var.astype(running_var.dtype) * running_var.dtype.type(count / (count - 1))
    running_mean *= 1 - momentum
    running_mean += momentum * mean.astype(running_mean.dtype)
    running_var *= 1 - momentum
    running_var += momentum * unbiased


def batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalisation of x (N, C) or (N, C, *spatial) over every axis but the channel axis 1.

    ``training=True`` (or no running statistics) normalises with the batch mean and biased variance
    (:class:`BatchNormTrainFunction`); when running_mean / running_var (C,) are given in training they
    are then updated in place: ``r = (1 - momentum) * r + momentum * batch_stat`` with the unbiased
    variance for running_var. Eval mode normalises with the running statistics
    (:class:`BatchNormEvalFunction`). weight / bias (C,) are the optional affine parameters. Returns a
    tensor shaped like x.
    """
    name = "batch_norm"
    (x,) = cast_to_float32(as_tensor(x))  # float16 input -> float32 statistics under autocast
    weight, bias, running_mean, running_var = _norm_arguments(name, x, weight, bias, running_mean, running_var)
    if not training and running_mean is not None:
        return BatchNormEvalFunction.apply(x, running_mean, running_var, weight, bias, float(eps))
    y, mean, var = BatchNormTrainFunction.apply(x, weight, bias, float(eps))
    if running_mean is not None:
        update_running_stats(running_mean.data, running_var.data, mean.data, var.data, x.numel() // x.shape[1], float(momentum))
    return y


def batch_norm_relu(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``relu(batch_norm(x, ...))`` as one op (:class:`BatchNormReLUFunction`): equal to the two in sequence.

    Same arguments and running-statistics update as :func:`batch_norm`. One pass over the data for the
    normalise and the ReLU instead of two, and only y kept for backward (no ReLU mask). The residual
    blocks of :mod:`minires.models` call it for their inner BN + ReLU pairs when no hooks watch those layers.
    """
    return _fused("batch_norm_relu", x, None, running_mean, running_var, weight, bias, training, momentum, eps)


def batch_norm_add_relu(
    x: Tensor,
    residual: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``relu(batch_norm(x, ...) + residual)`` as one op: the tail of a post-activation residual block.

    Same arguments and running-statistics update as :func:`batch_norm`, plus ``residual`` (x's shape).
    Equal to the three ops in sequence, in one pass over the data instead of three
    (:class:`BatchNormAddReLUFunction`). The residual blocks of :mod:`minires.models` call it when no hooks
    watch the layers it replaces.
    """
    return _fused("batch_norm_add_relu", x, residual, running_mean, running_var, weight, bias, training, momentum, eps)


def _fused(
    name: str, x: Any, residual: Any, running_mean: Any, running_var: Any, weight: Any, bias: Any,
    training: bool, momentum: float, eps: float,
) -> Tensor:
    """:func:`batch_norm_relu` (``residual`` None) or :func:`batch_norm_add_relu`: checks, the Function, the
    running-statistics update."""
    if residual is None:
        (x,) = cast_to_float32(as_tensor(x))
    else:
        x, residual = cast_to_float32(as_tensor(x), as_tensor(residual))
    weight, bias, running_mean, running_var = _norm_arguments(name, x, weight, bias, running_mean, running_var)
    if residual is not None and residual.device != x.device:
        raise RuntimeError(f"{name}: residual is on {residual.device}, input is on {x.device}; move them to one device")
    head = (x,) if residual is None else (x, residual)
    fn = BatchNormReLUFunction if residual is None else BatchNormAddReLUFunction
    if not training and running_mean is not None:
        y, _, _ = fn.apply(*head, weight, bias, running_mean, running_var, float(eps))
        return y
    y, mean, var = fn.apply(*head, weight, bias, None, None, float(eps))
    if running_mean is not None:
        update_running_stats(running_mean.data, running_var.data, mean.data, var.data, x.numel() // x.shape[1], float(momentum))
    return y


def _norm_arguments(name: str, x: Tensor, *optional: Any) -> tuple[Tensor | None, ...]:
    """Check x and both-or-neither running statistics; weight, bias, running_mean, running_var as tensors
    or None. The running statistics, updated in place outside any Function, are checked here."""
    _check_input(name, x)
    weight, bias, running_mean, running_var = (None if t is None else as_tensor(t) for t in optional)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{name}: give both running_mean and running_var, or neither")
    for what, t in (("running_mean", running_mean), ("running_var", running_var)):
        _check_channel_vector(name, what, t, x)  # shape and device
    return weight, bias, running_mean, running_var
