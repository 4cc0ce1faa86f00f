"""``SyncBatchNorm``: batch normalisation whose statistics are those of the *global* batch (all ranks).

With plain BatchNorm under data parallelism each rank normalises with its own per-rank batch's mean
and variance, so 2 ranks x 64 images do not compute what one process with 128 images would. SyncBatchNorm
all-reduces the per-channel sums, so every rank normalises with the global statistics:

forward (per channel, over all M = sum of N*H*W values on every rank)::

    mean = all_reduce(sum x) / M                  # one message: C sums and the count
    var  = all_reduce(sum (x - mean)^2) / M       # second message: exact two-pass variance, no cancellation
    y    = (x - mean) / sqrt(var + eps) * weight + bias

backward, with x_hat = (x - mean) * invstd and g = dL/dy (each rank's own)::

    sum_g, sum_gx = all_reduce(sum g, sum g * x_hat)                 # one message of 2C numbers
    dx = weight * invstd * (g - sum_g / M - x_hat * sum_gx / M)
    dweight, dbias = the *local* sum(g * x_hat), sum(g)

dweight/dbias stay local because DistributedDataParallel averages them over the ranks afterwards, like
every other gradient (and the mean of per-rank sums over per-rank mean losses is the global one).
In eval mode it is plain BatchNorm with the running statistics (no communication). With one process
it is exactly BatchNorm.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minires.amp import cast_to_float32
from minires.autograd.function import Context, Function
from minires.backend import xp_of
from minires.distributed.comm import Communicator
from minires.distributed.group import world
from minires.nn import Module
from minires.nn.modules.batchnorm import _BatchNorm
from minires.ops._util import as_tensor, check_float
from minires.ops.normalization import _channel_dot, _channel_sum, _check_channel_vector
from minires.tensor import Tensor


def _global_sums(comm: Communicator, xp: Any, *parts: Any) -> Any:
    """Concatenate per-channel vectors (and scalars) into one float64 message and sum it over the ranks."""
    packed = xp.concatenate([xp.asarray(p, dtype=np.float64).reshape(-1) for p in parts])
    return comm.all_reduce(packed, "sum")


class SyncBatchNormFunction(Function):
    """Training-mode batch norm with global statistics; arguments as :class:`minires.ops.normalization.BatchNorm`
    (x, weight, bias, running_mean, running_var raw arrays or None), then momentum, eps and the communicator."""

    @staticmethod
    def forward(ctx: Context, x: Any, weight: Any, bias: Any, running_mean: Any, running_var: Any,
                momentum: float, eps: float, comm: Communicator) -> Any:  # fmt: skip
        xp = xp_of(x)
        dt = x.dtype
        c = x.shape[1]
        x3 = x.reshape(x.shape[0], c, -1)
        sums = _global_sums(comm, xp, _channel_sum(xp, x3), np.float64(x3.shape[0] * x3.shape[2]))
        m = float(sums[c])
        if m <= 1:
            raise ValueError(f"SyncBatchNorm: expected more than 1 value per channel over all ranks when training, "
                             f"got {int(m)} (input of shape {x.shape} on this rank)")
        mean = (sums[:c] / m).astype(dt)
        d = x3 - mean[:, None]
        var = (_global_sums(comm, xp, _channel_dot(xp, d, d))[:c] / m).astype(dt)
        invstd = (1 / xp.sqrt(var + dt.type(eps))).astype(dt, copy=False)
        w = None if weight is None else weight.astype(dt, copy=False)
        scale = invstd if w is None else invstd * w
        out = d * scale[:, None]
        if bias is not None:
            out += bias.astype(dt, copy=False)[:, None]
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean.astype(running_mean.dtype)
            running_var *= 1 - momentum
            running_var += momentum * var.astype(running_var.dtype) * running_var.dtype.type(m / (m - 1))
        ctx.comm, ctx.m, ctx.x_shape = comm, m, x.shape
        ctx.save_for_backward(x3, mean, invstd, w)
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, ...]:
        x3, mean, invstd, w = ctx.saved_tensors
        xp = xp_of(g)
        dt = x3.dtype
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        g3 = g.reshape(x3.shape)
        d = x3 - mean[:, None]
        sum_g = _channel_sum(xp, g3)
        sum_gd = _channel_dot(xp, g3, d)
        dx = None
        if need_x:  # every rank's graph is the same, so every rank takes this branch (and the all-reduce) or none does
            c = x3.shape[1]
            total = _global_sums(ctx.comm, xp, sum_g, sum_gd)
            mean_g = (total[:c] / ctx.m).astype(dt)
            mean_gd = (total[c:] / ctx.m).astype(dt)
            k = invstd if w is None else invstd * w
            dx = (g3 - mean_g[:, None] - d * (invstd * invstd * mean_gd)[:, None]) * k[:, None]
            dx = dx.reshape(ctx.x_shape)
        dw = sum_gd * invstd if need_w else None
        db = sum_g if need_b else None
        return dx, dw, db, None, None, None, None, None


def sync_batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Training-mode batch norm of x (N, C, *) with the statistics of the batch on all ranks together;
    running_mean / running_var (C,), when given, are updated in place with the global statistics."""
    name = "sync_batch_norm"
    (x,) = cast_to_float32(as_tensor(x))  # float16 input -> float32 statistics under autocast, as batch_norm
    check_float(name, x)
    if x.ndim < 2:
        raise ValueError(f"{name}: expected input of shape (N, C) or (N, C, *spatial), got shape {x.shape}")
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{name}: give both running_mean and running_var, or neither")
    for what, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        _check_channel_vector(name, what, t, x)  # the shape (issue 17's signature); the device below
        if t is not None and t.device != x.device:
            raise RuntimeError(f"{name}: {what} is on {t.device}, input is on {x.device}; move them to one device")
    rm = None if running_mean is None else running_mean.data
    rv = None if running_var is None else running_var.data
    return SyncBatchNormFunction.apply(x, weight, bias, rm, rv, float(momentum), float(eps), world())


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over (N, C, *) input with statistics synchronised across the ranks in training.

    Same arguments, parameters, buffers and state-dict keys as ``BatchNorm1d/2d``; build it directly
    or convert a model with :meth:`convert_sync_batchnorm`."""

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002
        if input.ndim < 2:
            raise ValueError(f"SyncBatchNorm: expected at least 2D input (got {input.ndim}D input)")

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - PyTorch's argument name
        if not self.training:
            return super().forward(input)  # running statistics: nothing to synchronise
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.data += 1
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked.item())
        track = self.track_running_stats
        return sync_batch_norm(input, self.running_mean if track else None, self.running_var if track else None,
                               self.weight, self.bias, factor, self.eps)

    @classmethod
    def convert_sync_batchnorm(cls, module: Module) -> Module:
        """Replace every BatchNorm1d/2d in ``module`` (or ``module`` itself) by a SyncBatchNorm sharing its
        parameters and buffers (the same Tensor objects) and its train/eval mode. Returns the result."""
        if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
            sync = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                       bias=module.bias is not None or not module.affine)  # fmt: skip
            sync._parameters.update(module._parameters)  # the same Parameter and buffer objects, not copies
            sync._buffers.update(module._buffers)
            sync.train(module.training)
            return sync
        for name, child in list(module._modules.items()):
            if child is not None:
                module._modules[name] = cls.convert_sync_batchnorm(child)
        return module


convert_sync_batchnorm = SyncBatchNorm.convert_sync_batchnorm
