"""Switching graph recording off and on: ``no_grad`` / ``enable_grad`` (context managers and decorators)."""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_state = threading.local()


def is_grad_enabled() -> bool:
    """True when ops record the graph for backward (the default)."""
    return getattr(_state, "enabled", True)


def set_grad_enabled(mode: bool) -> None:
    _state.enabled = bool(mode)


class _GradMode:
    """Context manager and decorator that sets grad mode inside and restores it after."""

    mode: bool

    def __enter__(self) -> None:
        self._prev = is_grad_enabled()
        set_grad_enabled(self.mode)

    def __exit__(self, *exc: object) -> None:
        set_grad_enabled(self._prev)

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.__class__():
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


class no_grad(_GradMode):  # noqa: N801 - PyTorch's name
    """``with mr.no_grad(): ...`` or ``@mr.no_grad()``: ops inside record no graph."""

    mode = False


class enable_grad(_GradMode):  # noqa: N801 - PyTorch's name
    """Turn graph recording back on inside a ``no_grad`` region."""

    mode = True
