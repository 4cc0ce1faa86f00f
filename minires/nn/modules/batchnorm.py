"""``BatchNorm1d`` / ``BatchNorm2d``: batch normalisation with running statistics (PyTorch's semantics).

Buffers as PyTorch's: ``running_mean`` (zeros), ``running_var`` (ones) and ``num_batches_tracked``
(int64, +1 per training forward). ``momentum=None`` turns the running statistics into a cumulative
average (factor 1 / num_batches_tracked). Affine parameters start at weight = 1, bias = 0;
``bias=False`` (keyword-only, as in PyTorch 2.13) keeps the scale and drops the shift.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minires.nn import functional as F
from minires.nn import init
from minires.nn.modules._factory import new_buffer, new_parameter
from minires.nn.modules.module import Module
from minires.tensor import Tensor


class _BatchNorm(Module):
    """Shared state and forward of the BatchNorm layers; subclasses only check the input's rank."""

    _expected_dims: tuple[int, ...] = ()
    _optional_on_load = ("num_batches_tracked",)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = new_parameter((num_features,), device, dtype)
            if bias:
                self.bias = new_parameter((num_features,), device, dtype)
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", new_buffer((num_features,), device, dtype))
            self.register_buffer("running_var", new_buffer((num_features,), device, dtype, fill=1.0))
            self.register_buffer("num_batches_tracked", new_buffer((), device, np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """running_mean = 0, running_var = 1, num_batches_tracked = 0."""
        if self.track_running_stats:
            init.zeros_(self.running_mean)
            init.ones_(self.running_var)
            init.zeros_(self.num_batches_tracked)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002
        if input.ndim not in self._expected_dims:
            wanted = " or ".join(f"{d}D" for d in self._expected_dims)
            raise ValueError(f"{type(self).__name__}: expected {wanted} input (got {input.ndim}D input)")

    def _functional_arguments(self, input: Tensor) -> tuple[Any, ...]:  # noqa: A002
        """(running_mean, running_var, weight, bias, training, momentum, eps) for F.batch_norm, after
        counting the batch (``num_batches_tracked``, which sets the factor when momentum is None)."""
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.data += 1
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked.item())
        # Batch statistics in training, or in eval when there are no running statistics to use.
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return (
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - PyTorch's argument name
        return F.batch_norm(input, *self._functional_arguments(input))

    def forward_relu(self, input: Tensor) -> Tensor:  # noqa: A002
        """``relu(self(input))`` as one op (:func:`F.batch_norm_relu`), with the same state updates as
        ``forward``; hooks of this layer do not run (callers check there are none)."""
        return F.batch_norm_relu(input, *self._functional_arguments(input))

    def forward_add_relu(self, input: Tensor, residual: Tensor) -> Tensor:  # noqa: A002
        """``relu(self(input) + residual)`` as one op (:func:`F.batch_norm_add_relu`), with the same state
        updates as ``forward``; hooks of this layer do not run (callers check there are none)."""
        return F.batch_norm_add_relu(input, residual, *self._functional_arguments(input))

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}"
        )


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L) input, per channel C."""

    _expected_dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) input, per channel C."""

    _expected_dims = (4,)
