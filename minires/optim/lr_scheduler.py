"""Learning-rate schedules: StepLR, MultiStepLR, LinearLR, CosineAnnealingLR, OneCycleLR, SequentialLR.

Semantics follow ``torch.optim.lr_scheduler``: a scheduler writes ``group["lr"]`` of its optimizer's
param groups, remembers each group's starting rate as ``group["initial_lr"]`` (``base_lrs``), and
constructing one performs the initial step (``last_epoch`` goes from -1 to 0). Call
``optimizer.step()`` first, then ``scheduler.step()``, once per iteration (or epoch).

StepLR, MultiStepLR and LinearLR are *chainable* like PyTorch's: each step multiplies the current
``group["lr"]``, so two of them on one optimizer compose. CosineAnnealingLR and OneCycleLR set the
rate from their closed forms (``base_lrs`` and the step count), so they override other schedules.

``state_dict()`` holds plain numbers, strings and lists only (see
:func:`minires.save_tree` for saving). Restore the optimizer's
state dict too: ``initial_lr`` and the current rates live in its param groups.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import Any, Mapping, Sequence

from minires.optim.optimizer import Optimizer, as_index_list, to_python

__all__ = [
    "LRScheduler", "StepLR", "MultiStepLR", "LinearLR", "CosineAnnealingLR", "OneCycleLR", "SequentialLR",
]


class LRScheduler:
    """Base class: subclasses implement :meth:`get_lr` (the rates for ``self.last_epoch``).

    ``_saved`` names the attributes :meth:`state_dict` saves besides the step counters.
    """

    _saved: tuple[str, ...] = ()
    _is_initial: bool = False

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: {type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"{type(self).__name__}: param 'initial_lr' is not specified in param_groups[{i}] when "
                        f"resuming with last_epoch={last_epoch}; load the optimizer's state dict first"
                    )
        self.base_lrs: list[float] = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self) -> None:
        """Reset the step count and take the first step (what construction does)."""
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def _current_lrs(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        """The rates for ``self.last_epoch`` (called by :meth:`step`; use :meth:`get_last_lr` to read)."""
        raise NotImplementedError

    def _get_closed_form_lr(self) -> list[float]:
        """The rates at ``self.last_epoch`` from ``base_lrs`` alone (used when SequentialLR switches)."""
        return self.get_lr()

    def get_last_lr(self) -> list[float]:
        """The rates the last step set, one per param group."""
        return list(self._last_lr)

    def step(self) -> None:
        """Advance one step and write the new rates into the optimizer's param groups."""
        self._step_count += 1
        self._update_lr(None)

    def _update_lr(self, epoch: int | None) -> None:
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            self.last_epoch = epoch
            values = self._get_closed_form_lr()
        for group, lr in zip(self.optimizer.param_groups, values, strict=True):
            group["lr"] = lr
        self._last_lr = self._current_lrs()

    # ----- state dicts ------------------------------------------------------------------------
    def _state_keys(self) -> tuple[str, ...]:
        return ("last_epoch", "_step_count", "base_lrs", "_last_lr", *self._saved)

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state: step counters, base and last rates, hyperparameters (plain values)."""
        return {key: _copy(getattr(self, key)) for key in self._state_keys()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (or its flattened round trip)."""
        name = f"{type(self).__name__}.load_state_dict"
        missing = [key for key in self._state_keys() if key not in state_dict]
        if missing:
            raise ValueError(f"{name}: the state dict lacks {', '.join(map(repr, missing))}")
        values = {key: to_python(state_dict[key]) for key in self._state_keys()}
        n_groups = len(self.optimizer.param_groups)
        for key in ("base_lrs", "_last_lr"):
            if key in values:
                values[key] = list(values[key]) if isinstance(values[key], (list, tuple)) else [values[key]]
                if len(values[key]) != n_groups:
                    raise ValueError(
                        f"{name}: {key} has {len(values[key])} entries, the optimizer has {n_groups} param groups"
                    )
        for key, value in values.items():
            setattr(self, key, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, last_lr={self.get_last_lr()})"


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def _per_group(name: str, optimizer: Optimizer, value: float | Sequence[float]) -> list[float]:
    """OneCycleLR's ``name`` with one value per param group: a scalar repeated, or a list whose length must match."""
    n = len(optimizer.param_groups)
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"OneCycleLR: expected {n} values for {name} (one per param group), got {len(value)}")
        return list(value)
    return [value] * n


class StepLR(LRScheduler):
    """Multiply the rate by ``gamma`` every ``step_size`` steps: ``base_lr * gamma ** (t // step_size)``."""

    _saved = ("step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        if not isinstance(step_size, int) or step_size <= 0:
            raise ValueError(f"StepLR: step_size must be a positive integer, got {step_size!r}")
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]

    def _get_closed_form_lr(self) -> list[float]:
        return [base_lr * self.gamma ** (self.last_epoch // self.step_size) for base_lr in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Multiply the rate by ``gamma`` at each milestone: ``base_lr * gamma ** bisect_right(milestones, t)``.

    A milestone listed twice multiplies by ``gamma ** 2`` there, as in PyTorch.
    """

    _saved = ("milestones", "gamma")

    def __init__(
        self, optimizer: Optimizer, milestones: Sequence[int], gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        count = self.milestones.count(self.last_epoch)
        if count == 0:
            return self._current_lrs()
        return [lr * self.gamma**count for lr in self._current_lrs()]

    def _get_closed_form_lr(self) -> list[float]:
        k = bisect_right(self.milestones, self.last_epoch)
        return [base_lr * self.gamma**k for base_lr in self.base_lrs]


class LinearLR(LRScheduler):
    """Warm-up: scale the rate linearly from ``start_factor`` to ``end_factor`` over ``total_iters`` steps.

    Closed form: ``base_lr * (start + (end - start) * min(t, total_iters) / total_iters)``.
    """

    _saved = ("start_factor", "end_factor", "total_iters")

    def __init__(
        self,
        optimizer: Optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError(f"LinearLR: start_factor must be in (0, 1], got {start_factor}")
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError(f"LinearLR: end_factor must be in [0, 1], got {end_factor}")
        if not isinstance(total_iters, int) or total_iters <= 0:
            raise ValueError(f"LinearLR: total_iters must be a positive integer, got {total_iters!r}")
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0:
            return [lr * self.start_factor for lr in self._current_lrs()]
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._current_lrs()
        span = self.end_factor - self.start_factor
        factor = 1.0 + span / (self.total_iters * self.start_factor + (self.last_epoch - 1) * span)
        return [lr * factor for lr in self._current_lrs()]

    def _get_closed_form_lr(self) -> list[float]:
        frac = min(self.total_iters, self.last_epoch) / self.total_iters
        return [base_lr * (self.start_factor + (self.end_factor - self.start_factor) * frac) for base_lr in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Cosine decay from ``base_lr`` to ``eta_min`` over ``T_max`` steps, from its closed form:

    ``lr(t) = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``

    (past ``T_max`` the cosine carries on and the rate rises again, as in PyTorch).
    """

    _saved = ("T_max", "eta_min")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:  # noqa: N803
        if not isinstance(T_max, int) or T_max <= 0:
            raise ValueError(f"CosineAnnealingLR: T_max must be a positive integer, got {T_max!r}")
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self._is_initial:  # the first step keeps the rates the optimizer starts with, as PyTorch
            return self._current_lrs()
        return self._get_closed_form_lr()

    def _get_closed_form_lr(self) -> list[float]:
        cos_out = 1 + math.cos(math.pi * self.last_epoch / self.T_max)
        return [self.eta_min + (base_lr - self.eta_min) * cos_out / 2 for base_lr in self.base_lrs]


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin): warm up from ``max_lr / div_factor`` to ``max_lr``, then anneal
    to ``initial_lr / final_div_factor``; momentum (or Adam's beta1) cycles the other way.

    Phases (``T = total_steps``, ``p = pct_start``), each annealed by cosine or linearly in its own
    fraction ``(t - start) / (end - start)``:

    - two phases: ``[0, p*T - 1]`` initial_lr -> max_lr, ``[p*T - 1, T - 1]`` max_lr -> min_lr;
    - ``three_phase``: ``[0, p*T - 1]`` up, ``[p*T - 1, 2*p*T - 2]`` back to initial_lr,
      ``[2*p*T - 2, T - 1]`` initial_lr -> min_lr.

    Step once per batch; stepping past ``total_steps`` raises ValueError.
    """

    _saved = ("total_steps", "pct_start", "anneal_strategy", "three_phase", "cycle_momentum", "use_beta1")

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | Sequence[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | Sequence[float] = 0.85,
        max_momentum: float | Sequence[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"OneCycleLR: {type(optimizer).__name__} is not an Optimizer")
        if total_steps is not None:
            if not isinstance(total_steps, int) or total_steps <= 0:
                raise ValueError(f"OneCycleLR: expected a positive integer total_steps, got {total_steps!r}")
            self.total_steps = total_steps
        elif epochs is not None and steps_per_epoch is not None:
            if not isinstance(epochs, int) or epochs <= 0:
                raise ValueError(f"OneCycleLR: expected a positive integer epochs, got {epochs!r}")
            if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
                raise ValueError(f"OneCycleLR: expected a positive integer steps_per_epoch, got {steps_per_epoch!r}")
            self.total_steps = epochs * steps_per_epoch
        else:
            raise ValueError("OneCycleLR: give either total_steps or both epochs and steps_per_epoch")
        if not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"OneCycleLR: expected pct_start in [0, 1], got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.pct_start = float(pct_start)
        self.anneal_strategy = anneal_strategy
        self.three_phase = bool(three_phase)
        self._build_phases()

        max_lrs = _per_group("max_lr", optimizer, max_lr)
        if last_epoch == -1:
            for group, lr in zip(optimizer.param_groups, max_lrs):
                group["initial_lr"] = lr / div_factor
                group["max_lr"] = lr
                group["min_lr"] = group["initial_lr"] / final_div_factor

        self.cycle_momentum = bool(cycle_momentum)
        self.use_beta1 = "betas" in optimizer.defaults
        if self.cycle_momentum:
            if "momentum" not in optimizer.defaults and not self.use_beta1:
                raise ValueError(
                    f"OneCycleLR: cycle_momentum needs an optimizer with momentum or betas, "
                    f"{type(optimizer).__name__} has neither"
                )
            max_moms = _per_group("max_momentum", optimizer, max_momentum)
            base_moms = _per_group("base_momentum", optimizer, base_momentum)
            if last_epoch == -1:
                for group, m_max, m_base in zip(optimizer.param_groups, max_moms, base_moms):
                    self._set_momentum(group, m_max)
                    group["max_momentum"] = m_max
                    group["base_momentum"] = m_base
        super().__init__(optimizer, last_epoch)

    def _build_phases(self) -> None:
        """The phases as (end_step, start_lr key, end_lr key, start_momentum key, end_momentum key)."""
        t, p = self.total_steps, self.pct_start
        if self.three_phase:
            self._phases = [
                (float(p * t) - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (float(2 * p * t) - 2, "max_lr", "initial_lr", "base_momentum", "max_momentum"),
                (t - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
            ]
        else:
            self._phases = [
                (float(p * t) - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (t - 1, "max_lr", "min_lr", "base_momentum", "max_momentum"),
            ]

    def _set_momentum(self, group: dict[str, Any], momentum: float) -> None:
        if self.use_beta1:
            group["betas"] = (momentum, *group["betas"][1:])
        else:
            group["momentum"] = momentum

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self) -> list[float]:
        t = self.last_epoch
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {t} times; total_steps is {self.total_steps}")
        lrs = []
        for group in self.optimizer.param_groups:
            start_step = 0.0
            for i, (end_step, lr0, lr1, m0, m1) in enumerate(self._phases):
                if t <= end_step or i == len(self._phases) - 1:
                    pct = (t - start_step) / (end_step - start_step)
                    lrs.append(self._anneal(group[lr0], group[lr1], pct))
                    if self.cycle_momentum:
                        self._set_momentum(group, self._anneal(group[m0], group[m1], pct))
                    break
                start_step = end_step
        return lrs

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._build_phases()


class SequentialLR(LRScheduler):
    """Run ``schedulers`` one after another, switching at each of ``milestones`` (steps).

    At a milestone the next scheduler restarts from its step 0 (its closed form at 0), as PyTorch.
    """

    def __init__(
        self, optimizer: Optimizer, schedulers: Sequence[LRScheduler], milestones: Sequence[int], last_epoch: int = -1
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"SequentialLR: {type(optimizer).__name__} is not an Optimizer")
        if len(schedulers) < 1:
            raise ValueError("SequentialLR: expects at least one scheduler, got none")
        for i, scheduler in enumerate(schedulers):
            if getattr(scheduler, "optimizer", None) is not optimizer:
                raise ValueError(
                    f"SequentialLR: scheduler {i} ({type(scheduler).__name__}) belongs to a different optimizer"
                )
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                f"SequentialLR: expects one milestone fewer than schedulers, got {len(schedulers)} schedulers "
                f"and {len(milestones)} milestones"
            )
        self._schedulers = list(schedulers)
        self._milestones = [int(m) for m in milestones]
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        for group in optimizer.param_groups:  # undo what the schedulers' own initial steps did
            group["lr"] = group["initial_lr"]
        self._undo_initial_steps(self)
        idx = bisect_right(self._milestones, 0)
        self._schedulers[idx]._initial_step()
        self._last_lr = self._schedulers[idx].get_last_lr()

    @staticmethod
    def _undo_initial_steps(scheduler: LRScheduler) -> None:
        """Take back the initial step each inner scheduler took when it was built (recursively)."""
        for inner in getattr(scheduler, "_schedulers", []):
            if hasattr(inner, "_schedulers"):
                SequentialLR._undo_initial_steps(inner)
            else:
                inner.last_epoch -= 1

    def step(self) -> None:
        """Step the scheduler in charge now (restarting it at 0 when a milestone is reached)."""
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def _state_keys(self) -> tuple[str, ...]:
        return ("last_epoch", "_milestones", "_last_lr")

    def state_dict(self) -> dict[str, Any]:
        """Own counters plus every inner scheduler's state dict under ``_schedulers``."""
        state = super().state_dict()
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if "_schedulers" not in state_dict:
            raise ValueError("SequentialLR.load_state_dict: the state dict lacks '_schedulers'")
        inner = as_index_list(state_dict["_schedulers"], "SequentialLR.load_state_dict: _schedulers")
        if len(inner) != len(self._schedulers):
            raise ValueError(
                f"SequentialLR.load_state_dict: the state dict has {len(inner)} schedulers, "
                f"this SequentialLR has {len(self._schedulers)}"
            )
        super().load_state_dict(state_dict)
        self._milestones = [int(m) for m in self._milestones]
        for scheduler, state in zip(self._schedulers, inner):
            scheduler.load_state_dict(state)
