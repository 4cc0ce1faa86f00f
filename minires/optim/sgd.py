"""``SGD``: stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay.

PyTorch's update rule, per parameter with gradient ``g`` (``-g`` when ``maximize``)::

    g = g + weight_decay * p                      # when weight_decay != 0
    buf = g                    (first step)        # when momentum != 0
    buf = momentum * buf + (1 - dampening) * g     (later steps)
    g = g + momentum * buf  if nesterov else buf
    p = p - lr * g
"""

from __future__ import annotations

from typing import Any, Callable

from minires.autograd.grad_mode import no_grad
from minires.optim.optimizer import Optimizer, ParamsT


class SGD(Optimizer):
    """Stochastic gradient descent (optionally with momentum), exactly as ``torch.optim.SGD``."""

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, maximize=maximize,
        )
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        momentum, dampening = group["momentum"], group["dampening"]
        if not momentum >= 0.0:
            raise ValueError(f"SGD: invalid momentum={momentum} (must be >= 0)")
        if group["nesterov"] and (momentum <= 0 or dampening != 0):
            raise ValueError(
                f"SGD: nesterov momentum needs momentum > 0 and dampening = 0 "
                f"(got momentum={momentum}, dampening={dampening})"
            )

    @no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One SGD update of every parameter that has a gradient (in place on ``p.data``)."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
            weight_decay, nesterov, maximize = group["weight_decay"], group["nesterov"], group["maximize"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.data.astype(p.data.dtype, copy=False)
                if maximize:
                    grad = -grad
                if weight_decay != 0:
                    grad = grad + weight_decay * p.data
                if momentum != 0:
                    state = self.state.setdefault(p, {})
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = grad.copy()
                    else:
                        buf *= momentum
                        buf += (1 - dampening) * grad
                    grad = grad + momentum * buf if nesterov else buf
                p.data -= lr * grad
                p._bump_version()
        return loss
