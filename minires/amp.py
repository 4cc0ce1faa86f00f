"""Mixed precision: ``autocast`` (float16 compute, float32 master weights) and ``GradScaler`` (dynamic loss scaling).

The recipe, as PyTorch's ``torch.amp``::

    scaler = mr.amp.GradScaler()
    for x, y in loader:
        optimizer.zero_grad()
        with mr.amp.autocast():                    # float16 GEMMs in conv2d / linear
            loss = F.cross_entropy(model(x), y)    # the loss itself is computed in float32
        scaler.scale(loss).backward()              # scaled, so small float16 gradients do not flush to 0
        scaler.step(optimizer)                     # unscales; skips the step if any grad is inf/nan
        scaler.update()                            # halves the scale after an overflow, doubles it after
                                                   # growth_interval clean steps

Parameters stay float32 (the master weights). Inside ``autocast``, ``conv2d`` and ``linear`` cast their
floating inputs, weight and bias to the compute dtype (a differentiable cast, so the weight's gradient
arrives in float32); ``batch_norm``, ``cross_entropy`` and ``mse_loss`` upcast float16 inputs to
float32 and return float32 (statistics and log-sum-exp are where float16 loses accuracy).

Only float16: neither numpy nor CuPy has a bfloat16 dtype, so ``autocast(dtype="bfloat16")`` raises
rather than emulate one silently. On the CPU numpy float16 is for testing the mechanics (it is slower
than float32 there); the speed-up is a GPU (tensor core) matter.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any

import numpy as np

from minires import backend
from minires.tensor import Tensor

_state = threading.local()
LOW_PRECISION = (np.dtype(np.float16),)


def _parse_dtype(dtype: Any) -> np.dtype:
    if isinstance(dtype, str) and dtype.lower() in ("bfloat16", "bf16"):
        raise TypeError(
            "autocast: bfloat16 is not supported: neither numpy nor CuPy has a bfloat16 dtype; use float16 "
            "(with a GradScaler) instead"
        )
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"autocast: {dtype!r} is not a dtype; expected float16") from None
    if dt not in LOW_PRECISION:
        raise TypeError(f"autocast: compute dtype must be float16, got {dt}")
    return dt


def get_autocast_dtype() -> np.dtype | None:
    """The compute dtype of the innermost active ``autocast`` on this thread, or None outside one."""
    return getattr(_state, "dtype", None)


def is_autocast_enabled() -> bool:
    return get_autocast_dtype() is not None


class autocast(contextlib.ContextDecorator):  # noqa: N801 - PyTorch's name
    """Run ``conv2d`` / ``linear`` in ``dtype`` (float16) and losses / batch_norm in float32; nests and
    restores; usable as a decorator. ``enabled=False`` turns autocasting off inside the block."""

    def __init__(self, dtype: Any = np.float16, enabled: bool = True) -> None:
        self.dtype = _parse_dtype(dtype) if enabled else None
        self._saved: list[np.dtype | None] = []

    def __enter__(self) -> autocast:
        self._saved.append(get_autocast_dtype())
        _state.dtype = self.dtype
        return self

    def __exit__(self, *exc: Any) -> None:
        _state.dtype = self._saved.pop()


def _cast(t: Tensor | None, dtype: np.dtype) -> Tensor | None:
    if t is None or not isinstance(t, Tensor) or t.dtype.kind != "f" or t.dtype == dtype:
        return t
    return t.to(dtype=dtype)


def cast_to_compute(*tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Inside ``autocast``: the floating tensors cast to the compute dtype (others, and None, as given);
    outside: the tensors unchanged. For the GEMM ops (conv2d, linear)."""
    dtype = get_autocast_dtype()
    if dtype is None:
        return tensors
    return tuple(_cast(t, dtype) for t in tensors)


def cast_to_float32(*tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Inside ``autocast``: low-precision floating tensors upcast to float32; outside: unchanged.
    For the ops that need range or accuracy (batch_norm, losses)."""
    if get_autocast_dtype() is None:
        return tensors
    return tuple(_cast(t, np.dtype(np.float32)) if isinstance(t, Tensor) and t.dtype in LOW_PRECISION else t for t in tensors)


# -- dynamic loss scaling -------------------------------------------------------------------------
_READY, _UNSCALED, _STEPPED = "ready", "unscaled", "stepped"


class GradScaler:
    """Dynamic loss scaling, as ``torch.amp.GradScaler``.

    ``scale(loss)`` multiplies the loss by the current scale S; after backward, ``unscale_(opt)`` divides
    the grads of ``opt``'s parameters by S in place and records whether any is inf/nan; ``step(opt)``
    unscales if needed and calls ``opt.step()`` only when all grads are finite; ``update()`` then sets
    S *= backoff_factor after an overflow (and restarts the count), or S *= growth_factor once
    ``growth_interval`` consecutive steps were clean. The inf/nan check runs on the grads' device and
    costs one host sync per ``unscale_``.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
    ) -> None:
        if not init_scale > 0:
            raise ValueError(f"GradScaler: init_scale must be > 0, got {init_scale}")
        if not growth_factor > 1.0:
            raise ValueError(f"GradScaler: growth_factor must be > 1, got {growth_factor}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"GradScaler: backoff_factor must be in (0, 1), got {backoff_factor}")
        if int(growth_interval) < 1:
            raise ValueError(f"GradScaler: growth_interval must be >= 1, got {growth_interval}")
        self._enabled = bool(enabled)
        self._scale = float(init_scale)
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = int(growth_interval)
        self._growth_tracker = 0
        self._per_optimizer: dict[int, dict[str, Any]] = {}

    # -- the four calls of a step ---------------------------------------------------------------
    def scale(self, outputs: Any) -> Any:
        """``outputs`` (a Tensor, or a list/tuple of them) times the current scale."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, Tensor):
            return outputs * self._scale
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        raise TypeError(f"GradScaler.scale: expected a Tensor or a list/tuple of Tensors, got {type(outputs).__name__}")

    def unscale_(self, optimizer: Any) -> None:
        """Divide the grads of ``optimizer``'s parameters by the scale, in place; record inf/nan."""
        if not self._enabled:
            return
        state = self._state_of(optimizer)
        if state["stage"] == _UNSCALED:
            raise RuntimeError("GradScaler.unscale_: already called on this optimizer since the last update()")
        if state["stage"] == _STEPPED:
            raise RuntimeError("GradScaler.unscale_: called after step(); call update() first")
        inv = 1.0 / self._scale
        flags = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.data
                if g.dtype.kind != "f":
                    raise TypeError(f"GradScaler.unscale_: gradient of dtype {g.dtype} is not floating-point")
                g *= g.dtype.type(inv)
                xp = backend.xp_of(g)
                flags.append(xp.logical_not(xp.isfinite(g).all()))
        if flags:
            xp = backend.xp_of(flags[0])
            state["found_inf"] = bool(xp.stack(flags).any())  # the one host sync
        else:
            state["found_inf"] = False
        state["stage"] = _UNSCALED

    def step(self, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        """``optimizer.step(*args, **kwargs)`` unless a gradient is inf/nan (then the step is skipped)."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        state = self._state_of(optimizer)
        if state["stage"] == _STEPPED:
            raise RuntimeError("GradScaler.step: already called on this optimizer since the last update()")
        if state["stage"] == _READY:
            self.unscale_(optimizer)
        result = None if state["found_inf"] else optimizer.step(*args, **kwargs)
        state["stage"] = _STEPPED
        return result

    def update(self, new_scale: float | None = None) -> None:
        """Adjust the scale from this iteration's inf/nan checks (or set ``new_scale``); reset for the next."""
        if not self._enabled:
            return
        if new_scale is not None:
            if not float(new_scale) > 0:
                raise ValueError(f"GradScaler.update: new_scale must be > 0, got {new_scale}")
            self._scale = float(new_scale)
        else:
            checked = [s for s in self._per_optimizer.values() if "found_inf" in s]
            if not checked:
                raise RuntimeError("GradScaler.update: no inf checks were recorded; call step() (or unscale_()) first")
            if any(s["found_inf"] for s in checked):
                self._scale *= self._backoff_factor
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
                if self._growth_tracker == self._growth_interval:
                    grown = self._scale * self._growth_factor
                    if math.isfinite(grown):
                        self._scale = grown
                    self._growth_tracker = 0
        self._per_optimizer.clear()

    # -- inspection and checkpoints ---------------------------------------------------------------
    def _state_of(self, optimizer: Any) -> dict[str, Any]:
        return self._per_optimizer.setdefault(id(optimizer), {"stage": _READY})

    def found_inf(self, optimizer: Any) -> bool:
        """Whether the last unscale_ of ``optimizer`` saw an inf/nan gradient (False if none ran)."""
        return bool(self._per_optimizer.get(id(optimizer), {}).get("found_inf", False))

    def get_scale(self) -> float:
        return self._scale if self._enabled else 1.0

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def is_enabled(self) -> bool:
        return self._enabled

    def state_dict(self) -> dict[str, Any]:
        """Scale, factors, interval and the growth tracker (empty when disabled), as PyTorch's keys."""
        if not self._enabled:
            return {}
        return {
            "scale": self._scale,
            "growth_factor": self._growth_factor,
            "backoff_factor": self._backoff_factor,
            "growth_interval": self._growth_interval,
            "_growth_tracker": self._growth_tracker,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._enabled:
            return
        if not state_dict:
            raise RuntimeError("GradScaler.load_state_dict: the state dict is empty (saved from a disabled scaler?)")
        self._scale = float(state_dict["scale"])
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])
        self._growth_tracker = int(state_dict["_growth_tracker"])


__all__ = ["GradScaler", "autocast", "cast_to_compute", "cast_to_float32", "get_autocast_dtype", "is_autocast_enabled"]
