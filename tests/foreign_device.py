"""A pretend GPU for machines without one: the "foreign" device, whose arrays mix with numpy as CuPy's do.

CuPy arrays work with numpy's *functions* (``np.exp(a)``, ``np.sum(a)`` dispatch to CuPy through
``__array_ufunc__`` / ``__array_function__``) but refuse to be *converted*: ``np.asarray(a)`` raises
``TypeError: Implicit conversion to a NumPy array is not allowed``, and an op mixing a CuPy array with a
numpy array raises too. Host <-> device copies are explicit (``a.get()``, ``cupy.asarray(host)``).
Library code that allocates with ``np.zeros`` instead of its inputs' ``xp``, or hands a device array to
``np.asarray``, works on the CPU and breaks on the GPU. :class:`ForeignArray` reproduces exactly that
on the CPU, so the test suite catches such host/device mixing on every run.

Why a wrapper and not an ``np.ndarray`` subclass: numpy turns a subclass into a plain array without
asking it (``np.asarray(subclass)`` never calls ``__array__``), so a subclass cannot refuse the
conversion. :class:`ForeignArray` holds a plain ndarray and forwards what CuPy's ndarray supports.

Use: ``MINIRES_TEST_DEVICE=foreign pytest ...`` (conftest registers the device), or the
:func:`foreign_device` context manager / the ``foreign`` fixtures in single tests.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from minires import backend

NAME = "foreign"
IMPLICIT = (
    "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy "
    "array explicitly. (foreign test device, behaving as CuPy does)"
)


def _mixing_error(what: Any) -> TypeError:
    return TypeError(
        f"implicit conversion to a NumPy array is not allowed: an op got a host {type(what).__name__} "
        f"(shape {getattr(what, 'shape', '?')}) next to a foreign-device array; move it explicitly "
        f"(CuPy would raise here too)"
    )


def _unwrap(value: Any, *, strict_sequences: bool = False) -> Any:
    """ForeignArray -> its ndarray; a plain host ndarray raises (as mixing does in CuPy); recurse into lists."""
    if isinstance(value, ForeignArray):
        return value._a
    if isinstance(value, np.ndarray):
        raise _mixing_error(value)
    if isinstance(value, (list, tuple)):
        if strict_sequences:
            raise TypeError(f"Unsupported type {type(value).__name__} (foreign device ufuncs, like CuPy's, take arrays or scalars)")
        return type(value)(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def _unwrap_index(index: Any) -> Any:
    """Indices may be foreign arrays, host integer/bool arrays (CuPy copies those over), ints, slices."""
    if isinstance(index, ForeignArray):
        return index._a
    if isinstance(index, tuple):
        return tuple(_unwrap_index(i) for i in index)
    return index


def _wrap(value: Any) -> Any:
    """ndarray results -> ForeignArray; numpy scalars -> 0-d ForeignArray (CuPy reductions return 0-d arrays)."""
    if isinstance(value, ForeignArray):
        return value
    if isinstance(value, np.ndarray):
        return ForeignArray(value)
    if isinstance(value, np.generic):
        return ForeignArray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


class ForeignArray(NDArrayOperatorsMixin):
    """An array on the pretend "foreign" device: numpy underneath, CuPy's rules on the surface."""

    __slots__ = ("_a",)
    __array_priority__ = 100.0
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, array: np.ndarray) -> None:
        if type(array) is not np.ndarray:
            raise TypeError(f"ForeignArray: expected a plain numpy ndarray, got {type(array).__name__}")
        self._a = array

    # -- refusing implicit conversion ---------------------------------------------------------
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(IMPLICIT)

    def get(self) -> np.ndarray:
        """The explicit device -> host copy (CuPy's ``ndarray.get``)."""
        return self._a.copy()

    # -- numpy protocols: stay on the device, refuse host arrays --------------------------------
    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        raw = [_unwrap_index(x) if method == "at" and i == 1 else _unwrap(x, strict_sequences=True) for i, x in enumerate(inputs)]
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(_unwrap(o) for o in out)
        if "where" in kwargs:
            kwargs["where"] = _unwrap(kwargs["where"])
        result = getattr(ufunc, method)(*raw, **kwargs)
        if method == "at":
            return None
        if out is not None:  # the caller's own (foreign) out arrays
            return out[0] if len(out) == 1 else tuple(out)
        return _wrap(result)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        return _wrap(func(*_unwrap(list(args)), **_unwrap(dict(kwargs))))

    # -- attributes ------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._a.shape

    @shape.setter
    def shape(self, value: Any) -> None:
        self._a.shape = value

    @property
    def dtype(self) -> np.dtype:
        return self._a.dtype

    @property
    def ndim(self) -> int:
        return self._a.ndim

    @property
    def size(self) -> int:
        return self._a.size

    @property
    def strides(self) -> tuple[int, ...]:
        return self._a.strides

    @property
    def itemsize(self) -> int:
        return self._a.itemsize

    @property
    def nbytes(self) -> int:
        return self._a.nbytes

    @property
    def flags(self) -> Any:
        return self._a.flags

    @property
    def T(self) -> ForeignArray:  # noqa: N802 - numpy's name
        return ForeignArray(self._a.T)

    @property
    def real(self) -> ForeignArray:
        return ForeignArray(self._a.real)

    @property
    def imag(self) -> ForeignArray:
        return ForeignArray(self._a.imag)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(self._a, name)  # AttributeError for what ndarray lacks
        if not callable(attr):
            return _wrap(attr)
        if name in ("item", "tolist"):  # explicit host values, as in CuPy
            return attr

        def method(*args: Any, **kwargs: Any) -> Any:
            return _wrap(attr(*_unwrap(list(args)), **_unwrap(dict(kwargs))))

        method.__name__ = name
        return method

    # -- indexing, iteration, Python scalars ----------------------------------------------------
    def __getitem__(self, index: Any) -> Any:
        return _wrap(self._a[_unwrap_index(index)])

    def __setitem__(self, index: Any, value: Any) -> None:
        # CuPy copies a host value over on assignment; a foreign value is used as is
        self._a[_unwrap_index(index)] = value._a if isinstance(value, ForeignArray) else value

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self._a)):
            yield self[i]

    def __bool__(self) -> bool:
        return bool(self._a)

    def __float__(self) -> float:
        return float(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __index__(self) -> int:
        return self._a.__index__()

    def __complex__(self) -> complex:
        return complex(self._a)

    def __copy__(self) -> ForeignArray:
        return ForeignArray(self._a.copy())

    def __deepcopy__(self, memo: dict[int, Any]) -> ForeignArray:
        return ForeignArray(self._a.copy())

    def __reduce__(self) -> Any:
        return (ForeignArray, (self._a,))

    def __repr__(self) -> str:
        return f"ForeignArray({np.array2string(self._a, separator=', ')}, dtype={self._a.dtype})"

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(dir(self._a)))


# -- the device's array module ----------------------------------------------------------------------
_CREATION = {
    "zeros", "ones", "empty", "full", "arange", "eye", "identity", "linspace", "logspace", "tri",
    "zeros_like", "ones_like", "empty_like", "full_like",
}
_TRANSFER = {"asarray", "array", "ascontiguousarray", "asanyarray", "asfortranarray"}


def _check_device_args(name: str, args: Any) -> Any:
    try:
        return _unwrap(args)
    except TypeError as exc:
        raise TypeError(f"foreign xp.{name}: {exc}") from None


class _UfuncProxy:
    """``xp.add`` etc.: numpy's ufunc, refusing host arrays (CuPy's ufuncs do), with .at/.reduce/..."""

    def __init__(self, ufunc: np.ufunc) -> None:
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__

    def _call(self, method: str, args: Any, kwargs: Any) -> Any:
        if not any(isinstance(a, ForeignArray) for a in args):  # no foreign operand: refuse host arrays here
            _check_device_args(self.__name__ if method == "__call__" else f"{self.__name__}.{method}", list(args))
        fn = self._ufunc if method == "__call__" else getattr(self._ufunc, method)
        return _wrap(fn(*args, **kwargs))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("__call__", args, kwargs)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._ufunc, name)
        if name in ("at", "reduce", "accumulate", "reduceat", "outer"):
            return lambda *a, **k: self._call(name, a, k)
        return attr


class ForeignNamespace(types.SimpleNamespace):
    """The foreign device's ``xp``: creation returns ForeignArrays; everything else is numpy on unwrapped
    foreign arrays (host ndarrays refused); ``asarray``/``array`` of host data is the explicit upload."""

    def __init__(self, module: Any = np, prefix: str = "") -> None:
        super().__init__()
        self._module = module
        self._prefix = prefix
        self.ndarray = ForeignArray

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "random":
            raise AttributeError("foreign xp has no random module: minires draws on the host and uploads")
        attr = getattr(self._module, name)
        qual = self._prefix + name
        if isinstance(attr, types.ModuleType):
            return ForeignNamespace(attr, prefix=qual + ".")
        if isinstance(attr, np.ufunc):
            return _UfuncProxy(attr)
        if isinstance(attr, type) or not callable(attr):
            return attr  # dtypes, finfo, constants
        if name in _TRANSFER and not self._prefix:
            def transfer(obj: Any, *args: Any, **kwargs: Any) -> Any:
                if isinstance(obj, ForeignArray):
                    return _wrap(attr(obj._a, *args, **kwargs))
                return ForeignArray(np.asarray(attr(_unwrap_index(obj), *args, **kwargs)))
            return transfer
        if name in _CREATION and not self._prefix:
            def create(*args: Any, **kwargs: Any) -> Any:
                return _wrap(attr(*_check_device_args(qual, list(args)), **_check_device_args(qual, dict(kwargs))))
            return create

        def function(*args: Any, **kwargs: Any) -> Any:
            raw_args = _check_device_args(qual, list(args))
            raw_kwargs = _check_device_args(qual, dict(kwargs))
            return _wrap(attr(*raw_args, **raw_kwargs))

        function.__name__ = name
        return function


XP = ForeignNamespace()


def _to_host(a: ForeignArray) -> np.ndarray:
    return a.get()


def _from_host(a: np.ndarray) -> ForeignArray:
    return ForeignArray(np.array(a, copy=True))


def make_backend() -> backend.Backend:
    """The "foreign" device: ForeignArrays, the namespace above, explicit transfers only."""
    return backend.Backend(NAME, lambda: XP, lambda: (ForeignArray,), _to_host, _from_host)


def register() -> bool:
    """Register the device unless it already is; True when this call registered it."""
    if NAME in backend._BACKENDS:
        return False
    backend.register_backend(make_backend())
    return True


@contextlib.contextmanager
def foreign_device() -> Iterator[str]:
    """Register the foreign device for a block (leaving a session-wide registration in place)."""
    added = register()
    try:
        yield NAME
    finally:
        if added:
            backend.unregister_backend(NAME)
