"""Switching graph recording off and on: ``no_grad`` / ``enable_grad`` / ``inference_mode`` /
``set_grad_enabled``, each a context manager and a decorator that restores the previous mode on the
way out, exceptions included."""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_state = threading.local()


def is_grad_enabled() -> bool:
    """True when ops record the graph for backward (the default)."""
    return getattr(_state, "enabled", True)


def _set_enabled(mode: bool) -> None:
    _state.enabled = bool(mode)


class _GradMode:
    """Context manager and decorator that sets grad mode inside and restores it after."""

    mode: bool

    def __enter__(self) -> None:
        self._prev = is_grad_enabled()
        _set_enabled(self.mode)

    def __exit__(self, *exc: object) -> None:
        _set_enabled(self._prev)

    def _fresh(self) -> _GradMode:
        return self.__class__()

    def __call__(self, fn: F) -> F:
        if not callable(fn):
            raise TypeError(f"{type(self).__name__}: used as a decorator, expected a function, got {fn!r}")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._fresh():
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


class no_grad(_GradMode):  # noqa: N801 - PyTorch's name
    """``with mr.no_grad(): ...`` or ``@mr.no_grad()``: ops inside record no graph."""

    mode = False


class enable_grad(_GradMode):  # noqa: N801 - PyTorch's name
    """Turn graph recording back on inside a ``no_grad`` region."""

    mode = True


class inference_mode(_GradMode):  # noqa: N801 - PyTorch's name
    """``inference_mode(True)`` records no graph, as ``no_grad`` (minires has no cheaper inference tensors);
    ``inference_mode(False)`` leaves the mode as it is."""

    def __init__(self, mode: bool = True) -> None:
        self._requested = bool(mode)

    def __enter__(self) -> None:
        self._prev = is_grad_enabled()
        if self._requested:
            _set_enabled(False)

    def _fresh(self) -> _GradMode:
        return inference_mode(self._requested)


class set_grad_enabled(_GradMode):  # noqa: N801 - PyTorch's name
    """``mr.set_grad_enabled(False)`` switches recording off (a plain call, until switched back);
    ``with mr.set_grad_enabled(mode): ...`` and ``@mr.set_grad_enabled(mode)`` set it only inside."""

    def __init__(self, mode: bool) -> None:
        if not isinstance(mode, bool):
            raise TypeError(f"set_grad_enabled: expected a bool, got {mode!r}")
        self._prev = is_grad_enabled()
        self.mode = mode
        _set_enabled(mode)  # a plain call takes effect at once, as torch.set_grad_enabled

    def __enter__(self) -> None:
        pass  # already set by __init__; __exit__ restores the mode from before the call

    def __call__(self, fn: F) -> F:
        _set_enabled(self._prev)  # as a decorator, the mode applies only inside calls of fn
        return super().__call__(fn)

    def _fresh(self) -> _GradMode:
        return set_grad_enabled(self.mode)
