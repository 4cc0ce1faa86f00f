"""The array backend: which array library (numpy or cupy) holds a tensor's data.

Every op takes its array module (``xp``) from its inputs with :func:`xp_of`, so one code path
serves the CPU (numpy) and the GPU (cupy). CuPy is imported only when a "cuda" device is asked for.

Devices are registered by name in ``_BACKENDS``; "cpu" and "cuda" are built in. The registry is
also how the test suite plugs in a *foreign* CPU device whose arrays refuse silent conversion to
numpy (as CuPy's do), to catch host/device mixing bugs on machines without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

CUPY_INSTALL_HINT = (
    "CuPy is needed for device='cuda'. Install minires with the extra that matches your CUDA "
    "toolkit: pip install 'minires[cuda12]' (CUDA 12.x) or pip install 'minires[cuda13]' (CUDA 13.x)."
)


@dataclass
class Backend:
    """One device kind: its array module, array type and how arrays move to and from the host."""

    name: str
    load: Callable[[], Any]  # returns the array module (numpy, cupy, ...), importing it lazily
    array_types: Callable[[], tuple[type, ...]]
    to_host: Callable[[Any], np.ndarray]
    from_host: Callable[[np.ndarray], Any]
    _xp: Any = field(default=None, repr=False)

    @property
    def xp(self) -> Any:
        if self._xp is None:
            self._xp = self.load()
        return self._xp


def _load_cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(f"device 'cuda' is not available: {exc}. {CUPY_INSTALL_HINT}") from exc
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:  # pragma: no cover
            raise RuntimeError("device 'cuda' is not available: CuPy found no CUDA device.")
    except cupy.cuda.runtime.CUDARuntimeError as exc:  # pragma: no cover
        raise RuntimeError(f"device 'cuda' is not available: {exc}") from exc
    return cupy


def _cupy_types() -> tuple[type, ...]:
    import sys

    cupy = sys.modules.get("cupy")  # never import cupy just to ask what an array is
    return (cupy.ndarray,) if cupy is not None else ()


def _cupy_to_host(a: Any) -> np.ndarray:
    return a.get()


def _cupy_from_host(a: np.ndarray) -> Any:
    return _BACKENDS["cuda"].xp.asarray(a)


_BACKENDS: dict[str, Backend] = {
    "cpu": Backend("cpu", lambda: np, lambda: (np.ndarray, np.generic), np.asarray, lambda a: a),
    "cuda": Backend("cuda", _load_cupy, _cupy_types, _cupy_to_host, _cupy_from_host),
}


def register_backend(backend: Backend) -> None:
    """Add (or replace) a device kind. Used by tests to plug in a foreign-array device."""
    _BACKENDS[backend.name] = backend


def unregister_backend(name: str) -> None:
    if name in ("cpu", "cuda"):
        raise ValueError(f"unregister_backend: the built-in device {name!r} cannot be removed")
    _BACKENDS.pop(name, None)


def parse_device(device: Any) -> str:
    """Normalise a device spec ("cpu", "cuda", "cuda:0", a Device-like with .type) to its name."""
    if device is None:
        return "cpu"
    name = getattr(device, "type", device)
    if not isinstance(name, str):
        raise TypeError(f"device: expected a string such as 'cpu' or 'cuda', got {device!r}")
    base = name.split(":", 1)[0].lower()
    if base not in _BACKENDS:
        known = ", ".join(repr(k) for k in _BACKENDS)
        raise ValueError(f"device: unknown device {device!r}; expected one of {known}")
    return base


def get_backend(device: Any) -> Backend:
    return _BACKENDS[parse_device(device)]


def get_xp(device: Any) -> Any:
    """The array module for a device name ("cpu" -> numpy, "cuda" -> cupy)."""
    return get_backend(device).xp


def device_of(array: Any) -> str:
    """The name of the device an array lives on."""
    for name, backend in _BACKENDS.items():
        if name == "cpu":
            continue
        types = backend.array_types()
        if types and isinstance(array, types):
            return name
    if isinstance(array, (np.ndarray, np.generic)):
        return "cpu"
    raise TypeError(f"device_of: {type(array).__name__} is not an array of any known device")


def xp_of(*arrays: Any) -> Any:
    """The array module shared by the arrays given (numpy or cupy)."""
    for a in arrays:
        if a is None or isinstance(a, (np.ndarray, np.generic, int, float, bool)):
            continue
        return get_backend(device_of(a)).xp
    return np


def to_device(array: Any, device: Any) -> Any:
    """Move a raw array to a device (a copy only when the device changes)."""
    target = parse_device(device)
    source = device_of(array)
    if source == target:
        return array
    host = _BACKENDS[source].to_host(array)
    return _BACKENDS[target].from_host(np.ascontiguousarray(host).reshape(host.shape))


def to_numpy(array: Any) -> np.ndarray:
    """A host (numpy) copy or view of any backend's array."""
    return _BACKENDS[device_of(array)].to_host(array)


def add_at(target: Any, index: Any, values: Any) -> None:
    """Unbuffered ``target[index] += values`` (repeated indices accumulate), for any backend."""
    xp = xp_of(target)
    if xp is np:
        np.add.at(target, index, values)
    elif hasattr(xp, "add") and hasattr(xp.add, "at"):
        xp.add.at(target, index, values)
    else:  # pragma: no cover - cupy before ufunc.at existed
        import cupyx

        cupyx.scatter_add(target, index, values)


def cuda_is_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        _ = _BACKENDS["cuda"].xp
    except Exception:
        return False
    return True
