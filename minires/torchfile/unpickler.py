"""The restricted unpickler: admits only what a PyTorch weights file holds, and runs none of the file's code.

A ``torch.save`` pickle names Python objects by ``module.name`` (pickle's GLOBAL) and calls them with
arguments from the file (REDUCE). A normal unpickler imports and calls whatever is named, so a tampered
file can run ``os.system``. :class:`TorchUnpickler` resolves only this list, each to minires' own safe
stand-in (never to PyTorch, which need not be installed):

- ``torch._utils._rebuild_tensor`` / ``_rebuild_tensor_v2`` / ``_rebuild_tensor_v3`` -> a :class:`TensorRef`
  (storage, offset, size, stride; ``requires_grad`` and the empty hook dict are ignored);
- ``torch._utils._rebuild_parameter`` / ``_rebuild_parameter_with_state`` -> the tensor they wrap
  (a Parameter's Python attributes are dropped);
- ``torch.<X>Storage`` and ``torch.cuda.<X>Storage`` of the numeric dtypes, ``torch.storage.UntypedStorage``
  -> a :class:`StorageType` (only its dtype matters; every storage is read to the CPU);
- ``torch.<dtype>`` of those dtypes -> a :class:`TorchDtype`, ``torch.Size`` -> a tuple of ints;
- ``collections.OrderedDict`` -> a dict; ``builtins`` ``set``, ``frozenset``, ``complex``, ``bytearray`` and
  ``_codecs.encode`` (how protocol 2 pickles bytes) for Latin-1 text.

Everything else -- ``os.system``, ``builtins.eval``, ``torch.nn`` modules pickled whole, TorchScript,
quantized or sparse tensors -- raises :class:`UnsafeTorchPickleError` naming the ``module.name`` before
anything is called. Persistent ids are ``('storage', storage_type, key, location, numel[, view])`` and
become :class:`StorageRef` s, one per key; a pickled ``nn.Module`` class (``('module', ...)``) is refused.
"""

from __future__ import annotations

import pickle
from typing import IO, Any, Callable, Mapping

from minires.torchfile.errors import TorchFileError, UnsafeTorchPickleError
from minires.torchfile.tensors import DTYPE_ALIASES, STORAGE_TYPES, TORCH_DTYPES, StorageRef, StorageType, TensorRef, TorchDtype

STORAGE_MODULES = ("torch", "torch.cuda", "torch.storage")
_BUILTIN_MODULES = ("builtins", "__builtin__")  # Python 3 and Python 2 names


class LoadedDict(dict):
    """``collections.OrderedDict`` as the unpickler builds it: a dict whose pickled attributes (a state
    dict's ``_metadata`` of module versions) are read and dropped."""

    def __setstate__(self, state: Any) -> None:
        if state is not None and not isinstance(state, Mapping):
            raise UnsafeTorchPickleError(f"the pickle gave a dict the state {type(state).__name__}; only attributes are allowed")


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TorchFileError(f"a tensor's {what} should be a tuple of ints, got {value!r}")
    return tuple(value)


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TorchFileError(f"a tensor's {what} should be an int, got {value!r}")
    return value


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: str, metadata: Any = None) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise TorchFileError(f"a tensor's storage should be a saved storage, got {type(storage).__name__}")
    flags: Mapping[str, Any] = metadata or {}
    if not isinstance(flags, Mapping) or not set(flags) <= {"conj", "neg"}:
        raise TorchFileError(f"unsupported tensor metadata {metadata!r} (minires knows the 'conj' and 'neg' bits)")
    return TensorRef(storage, _int(offset, "storage offset"), _ints(size, "size"), _ints(stride, "stride"), dtype,
                     negate=bool(flags.get("neg", False)), conjugate=bool(flags.get("conj", False)))


def rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> TensorRef:
    """``torch._utils._rebuild_tensor`` (PyTorch 0.4-era files)."""
    return _tensor(storage, storage_offset, size, stride, getattr(storage, "dtype", ""))


def rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                      backward_hooks: Any = None, metadata: Any = None) -> TensorRef:
    """``torch._utils._rebuild_tensor_v2``: a tensor of its typed storage's dtype."""
    return _tensor(storage, storage_offset, size, stride, getattr(storage, "dtype", ""), metadata)


def rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any, backward_hooks: Any,
                      dtype: Any, metadata: Any = None) -> TensorRef:
    """``torch._utils._rebuild_tensor_v3``: a tensor of ``dtype`` over an untyped (byte) storage."""
    if not isinstance(dtype, TorchDtype):
        raise TorchFileError(f"_rebuild_tensor_v3 expects a torch dtype, got {dtype!r}")
    return _tensor(storage, storage_offset, size, stride, dtype.name, metadata)


def rebuild_parameter(data: Any, requires_grad: Any = True, backward_hooks: Any = None, state: Any = None) -> TensorRef:
    """``torch._utils._rebuild_parameter`` (and ``_with_state``): the Parameter's tensor."""
    if not isinstance(data, TensorRef):
        raise TorchFileError(f"a Parameter should wrap a tensor, got {type(data).__name__}")
    return data


def torch_size(dims: Any = ()) -> tuple[int, ...]:
    """``torch.Size(dims)`` -> a tuple of ints."""
    return _ints(dims, "torch.Size")


def codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode``, as protocol 2 pickles ``bytes`` (``encode(text, 'latin1')``); text codecs only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise UnsafeTorchPickleError(f"refused _codecs.encode({type(text).__name__}, {encoding!r}); only text encodings are allowed")
    return text.encode(encoding)


def bytes_array(data: Any = b"", *encoding: Any) -> bytearray:
    """``bytearray`` from bytes or text only (``bytearray(n)`` would let a file ask for n zero bytes)."""
    if isinstance(data, (bytes, bytearray)) and not encoding:
        return bytearray(data)
    if isinstance(data, str):
        return bytearray(codecs_encode(data, *encoding[:1]))
    raise UnsafeTorchPickleError(f"refused bytearray({type(data).__name__}): only bytes or text")


def _safe_builtins() -> dict[str, Callable[..., Any]]:
    return {"set": set, "frozenset": frozenset, "complex": complex, "bytearray": bytes_array}


_FUNCTIONS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
    ("torch", "Size"): torch_size,
    ("collections", "OrderedDict"): LoadedDict,
    ("_codecs", "encode"): codecs_encode,
}


def resolve_global(module: str, name: str) -> Any:
    """The safe stand-in for the global ``module.name``, or :class:`UnsafeTorchPickleError`."""
    if (module, name) in _FUNCTIONS:
        return _FUNCTIONS[(module, name)]
    if module in _BUILTIN_MODULES and name in _safe_builtins():
        return _safe_builtins()[name]
    if module in STORAGE_MODULES and name in STORAGE_TYPES:
        return StorageType(name, STORAGE_TYPES[name])
    if module == "torch" and (name in TORCH_DTYPES or name in DTYPE_ALIASES):
        return TorchDtype(DTYPE_ALIASES.get(name, name))
    hint = "a weights file holds only tensors, numbers, strings and dicts"
    if module.startswith("torch") and (name.endswith("Storage") or name.startswith(("float8", "q", "complex32", "bits"))):
        hint = "minires reads the storages and dtypes NumPy has (float16/32/64, bfloat16, ints, bool, complex)"
    elif module.startswith("torch.nn") or module.startswith("__main__") or module.startswith("__torch__"):
        hint = "the file holds a whole pickled model, not just its weights; save model.state_dict() instead"
    raise UnsafeTorchPickleError(f"refused to unpickle the global {module}.{name}: {hint}. None of the file's code was run.")


class TorchUnpickler(pickle.Unpickler):
    """Reads one ``torch.save`` pickle into placeholders; ``storages`` collects the storages it names."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file, encoding="utf-8")
        self.storages: dict[str, StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        return resolve_global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise TorchFileError(f"unexpected persistent id {pid!r} (PyTorch files use ('storage', ...) tuples)")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":
            raise UnsafeTorchPickleError("refused a pickled nn.Module class: the file holds a whole model, not just its "
                                         "weights; save model.state_dict() instead. None of the file's code was run.")
        if kind != "storage" or len(pid) not in (5, 6):
            raise TorchFileError(f"unexpected persistent id {pid!r} (expected ('storage', type, key, location, numel[, view]))")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, StorageType):
            raise TorchFileError(f"a storage's type should be a torch storage class, got {storage_type!r}")
        key = key.decode("ascii") if isinstance(key, bytes) else key
        if not isinstance(key, str) or not key or "/" in key or not isinstance(numel, int) or numel < 0:
            raise TorchFileError(f"malformed storage reference {pid!r}")
        ref = self.storages.get(key)
        if ref is None:
            ref = self.storages[key] = StorageRef(key, storage_type.dtype, numel)
        elif (ref.dtype, ref.numel) != (storage_type.dtype, numel):
            raise TorchFileError(f"storage {key!r} is named as {ref.numel} {ref.dtype} values and as {numel} {storage_type.dtype}")
        if view is None:
            return ref
        # Old files: ('storage', ..., (view_key, offset, size)) names a slice of the root storage.
        if not (isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, int) for v in view[1:])):
            raise TorchFileError(f"malformed storage view {view!r}")
        _view_key, offset, size = view
        if offset < 0 or size < 0:
            raise TorchFileError(f"malformed storage view {view!r}")
        return StorageRef(key, ref.dtype, ref.numel, view=(offset, size))


class DataUnpickler(pickle.Unpickler):
    """For the legacy format's plain header pickles (magic number, version, system info, storage keys):
    numbers, strings, lists and dicts only; every global and persistent id is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafeTorchPickleError(f"refused to unpickle the global {module}.{name} in a header of the file. "
                                     "None of the file's code was run.")

    def persistent_load(self, pid: Any) -> Any:
        raise TorchFileError("unexpected persistent id in a header of the file")
