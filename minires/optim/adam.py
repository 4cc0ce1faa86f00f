"""``Adam`` and ``AdamW``: adaptive moment estimation, with L2 (Adam) or decoupled (AdamW) weight decay.

PyTorch's update rule, per parameter with gradient ``g`` (``-g`` when ``maximize``) at step ``t``::

    p = p * (1 - lr * weight_decay)                # AdamW only (decoupled)
    g = g + weight_decay * p                       # Adam only (L2), when weight_decay != 0
    m = m + (1 - beta1) * (g - m)                  # = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    v_hat = max(v_hat, v) if amsgrad else v
    denom = sqrt(v_hat) / sqrt(1 - beta2**t) + eps
    p = p - lr / (1 - beta1**t) * m / denom
"""

from __future__ import annotations

from typing import Any, Callable

from minires.autograd.grad_mode import no_grad
from minires.backend import xp_of
from minires.optim.optimizer import Optimizer, ParamsT


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with bias correction and optional AMSGrad, as ``torch.optim.Adam``.

    ``weight_decay`` adds ``weight_decay * p`` to the gradient (L2 regularisation).
    """

    decoupled_weight_decay = False

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize
        )
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        betas, eps = group["betas"], group["eps"]
        if len(betas) != 2:
            raise ValueError(f"{self._name}: betas must be a pair (beta1, beta2), got {betas!r}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{self._name}: invalid beta parameter at index {i}: {beta} (must be in [0, 1))")
        if not eps >= 0.0:
            raise ValueError(f"{self._name}: invalid epsilon value eps={eps} (must be >= 0)")

    @no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Adam/AdamW update of every parameter that has a gradient (in place on ``p.data``)."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            weight_decay, amsgrad, maximize = group["weight_decay"], group["amsgrad"], group["maximize"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                xp = xp_of(p.data)
                grad = p.grad.data.astype(p.data.dtype, copy=False)
                if maximize:
                    grad = -grad
                state = self.state.setdefault(p, {})
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = xp.zeros_like(p.data)
                    state["exp_avg_sq"] = xp.zeros_like(p.data)
                    if amsgrad:
                        state["max_exp_avg_sq"] = xp.zeros_like(p.data)
                state["step"] += 1
                step = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

                if weight_decay != 0:
                    if self.decoupled_weight_decay:
                        p.data *= 1 - lr * weight_decay
                    else:
                        grad = grad + weight_decay * p.data

                exp_avg += (1 - beta1) * (grad - exp_avg)
                exp_avg_sq *= beta2
                exp_avg_sq += (1 - beta2) * (grad * grad)

                bias_correction1 = 1 - beta1**step
                bias_correction2_sqrt = (1 - beta2**step) ** 0.5
                step_size = lr / bias_correction1
                if amsgrad:
                    max_sq = state.get("max_exp_avg_sq")
                    if max_sq is None:  # amsgrad switched on after the first step
                        max_sq = state["max_exp_avg_sq"] = xp.zeros_like(p.data)
                    xp.maximum(max_sq, exp_avg_sq, out=max_sq)
                    denom = xp.sqrt(max_sq)
                else:
                    denom = xp.sqrt(exp_avg_sq)
                denom /= bias_correction2_sqrt
                denom += eps
                p.data -= step_size * exp_avg / denom
                p._bump_version()
        return loss


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as ``torch.optim.AdamW``.

    ``weight_decay`` shrinks the parameters directly, ``p *= 1 - lr * weight_decay``, before the
    Adam step; it never enters the moment estimates.
    """

    decoupled_weight_decay = True

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)
