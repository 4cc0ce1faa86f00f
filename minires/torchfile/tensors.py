"""Storages and tensors of a PyTorch file as NumPy arrays.

A PyTorch tensor is a view into a flat *storage*: ``(storage, offset, size, stride)``, with the
offset and strides counted in elements. Several tensors saved together may share one storage
(``w`` and ``w.t()``, or slices of one buffer). This module holds the placeholders the restricted
unpickler builds while it reads the pickle (:class:`StorageRef`, :class:`TensorRef`, :class:`TorchDtype`)
and turns them into arrays once the storages' bytes are known: the storage's bytes become a 1-d array
(byte order as the file says), the tensor is ``np.lib.stride_tricks.as_strided`` over it, then copied,
so every returned array owns its memory, is C-contiguous and in native byte order.

``bfloat16`` has no NumPy dtype: its values are widened to float32, which is exact (a bfloat16 is the
upper half of a float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from minires.torchfile.errors import UnsafeTorchPickleError

# torch dtype name -> NumPy type code of its elements on disk. "bfloat16" is read as its raw 16 bits.
TORCH_DTYPES: dict[str, str] = {
    "float64": "f8", "float32": "f4", "float16": "f2", "bfloat16": "u2",
    "int64": "i8", "int32": "i4", "int16": "i2", "int8": "i1",
    "uint64": "u8", "uint32": "u4", "uint16": "u2", "uint8": "u1", "bool": "u1",
    "complex128": "c16", "complex64": "c8",
}  # fmt: skip
# torch's other names for the same dtypes (torch.float is torch.float32, ...), as they may appear in a pickle.
DTYPE_ALIASES = {"double": "float64", "float": "float32", "half": "float16", "long": "int64", "int": "int32",
                 "short": "int16", "cdouble": "complex128", "cfloat": "complex64"}
# The legacy typed-storage classes (torch.FloatStorage, torch.cuda.FloatStorage, ...) and their dtypes.
STORAGE_TYPES: dict[str, str] = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexDoubleStorage": "complex128", "ComplexFloatStorage": "complex64",
    "UntypedStorage": "uint8",  # raw bytes; a tensor on it names its own dtype (torch._utils._rebuild_tensor_v3)
}  # fmt: skip


def numpy_dtype(torch_dtype: str) -> np.dtype:
    """The dtype of the arrays :func:`load_torch` returns for a torch dtype (bfloat16 -> float32)."""
    if torch_dtype == "bfloat16":
        return np.dtype(np.float32)
    if torch_dtype == "bool":
        return np.dtype(np.bool_)
    return np.dtype(TORCH_DTYPES[torch_dtype])


def itemsize(torch_dtype: str) -> int:
    return np.dtype(TORCH_DTYPES[torch_dtype]).itemsize


class _Placeholder:
    """Base of the objects the unpickler builds: a pickle may not set their state (BUILD opcode)."""

    def __setstate__(self, state: Any) -> None:
        raise UnsafeTorchPickleError(f"the pickle tried to set the state of a {type(self).__name__}; weights files never do")


@dataclass(frozen=True, eq=False)
class StorageType(_Placeholder):
    """``torch.FloatStorage`` and friends as they appear in a pickle: only their dtype matters."""

    name: str
    dtype: str


@dataclass(frozen=True, eq=False)
class TorchDtype(_Placeholder):
    """A ``torch.<dtype>`` object saved as a value; it comes back as the matching NumPy dtype."""

    name: str


@dataclass(eq=False)
class StorageRef(_Placeholder):
    """One storage named by a persistent id: ``numel`` elements of ``dtype`` under ``key`` (its record in
    the zip, or its place in the legacy file's storage list); ``view`` = (offset, numel) of an old-style
    storage view into it."""

    key: str
    dtype: str
    numel: int
    view: tuple[int, int] | None = None

    @property
    def nbytes(self) -> int:
        return self.numel * itemsize(self.dtype)


@dataclass(eq=False)
class TensorRef(_Placeholder):
    """A tensor to rebuild: ``size``/``stride``/``offset`` in elements of ``dtype`` over ``storage``."""

    storage: StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    negate: bool = False
    conjugate: bool = False


def decode_storage(raw: bytes | memoryview, torch_dtype: str, byteorder: str) -> np.ndarray:
    """Bytes of a storage -> a 1-d native-order array of ``torch_dtype``'s NumPy dtype (read-only is fine)."""
    code = TORCH_DTYPES[torch_dtype]
    size = np.dtype(code).itemsize
    if len(raw) % size:
        raise ValueError(f"a {torch_dtype} storage of {len(raw)} bytes is not a whole number of {size}-byte elements")
    order = "<" if byteorder == "little" else ">"
    values = np.frombuffer(raw, dtype=np.dtype(code).newbyteorder(order) if size > 1 else np.dtype(code))
    if torch_dtype == "bfloat16":  # the upper 16 bits of a float32
        return (values.astype(np.uint32) << 16).view(np.float32)
    if torch_dtype == "bool":
        return values != 0
    return values.astype(values.dtype.newbyteorder("="), copy=False)


def view_as_array(storage: np.ndarray, tensor: TensorRef, where: str) -> np.ndarray:
    """``tensor`` over the decoded 1-d ``storage``: as_strided, checked to stay inside it, then copied."""
    size, stride, offset = tensor.size, tensor.stride, tensor.offset
    if len(size) != len(stride):
        raise ValueError(f"{where}: a tensor has size {size} but stride {stride} (different lengths)")
    if offset < 0 or any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise ValueError(f"{where}: a tensor has a negative offset, size or stride ({offset}, {size}, {stride})")
    if 0 in size:
        return np.empty(size, dtype=storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise ValueError(
            f"{where}: a tensor of size {size}, stride {stride} at offset {offset} reaches element {last}, "
            f"but its storage holds {storage.size} (truncated or corrupt file)"
        )
    step = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=[s * step for s in stride], writeable=False)
    array = np.array(view, copy=True, order="C")
    if tensor.conjugate:
        array = np.conj(array)
    if tensor.negate:
        array = -array
    return array


def resolve(obj: Any, tensor_array: Callable[[TensorRef], np.ndarray], storage_array: Callable[[StorageRef], np.ndarray]) -> Any:
    """Replace every placeholder in the unpickled tree: tensors and bare storages by arrays, torch dtypes by
    NumPy dtypes, dicts (OrderedDict included) by plain dicts; lists, tuples, sets and scalars are kept.
    The same tensor object reached twice becomes the same array."""
    done: dict[int, Any] = {}

    def walk(node: Any) -> Any:
        key = id(node)
        if key in done:
            return done[key]
        if isinstance(node, TensorRef):
            out: Any = tensor_array(node)
        elif isinstance(node, StorageRef):
            out = storage_array(node)
        elif isinstance(node, TorchDtype):
            out = numpy_dtype(node.name)
        elif isinstance(node, StorageType):
            raise ValueError(f"a bare storage class ({node.name}) stands where a value belongs; not a weights file")
        elif isinstance(node, Mapping):
            out = {walk(k): walk(v) for k, v in node.items()}
        elif isinstance(node, list):
            out = [walk(v) for v in node]
        elif isinstance(node, tuple):
            out = tuple(walk(v) for v in node)
        elif isinstance(node, (set, frozenset)):
            out = type(node)(walk(v) for v in node)
        else:
            return node
        done[key] = out
        return out

    return walk(obj)


def materialize(obj: Any, raw: Mapping[str, bytes | memoryview], byteorder: str) -> Any:
    """The unpickled tree with every tensor and storage read from ``raw`` (bytes of each storage by key,
    already checked against the sizes the pickle names) in ``byteorder`` ("little" or "big")."""
    decoded: dict[tuple[str, tuple[int, int] | None, str], np.ndarray] = {}

    def storage_as(ref: StorageRef, dtype: str) -> np.ndarray:
        cache_key = (ref.key, ref.view, dtype)
        if cache_key not in decoded:
            data = memoryview(raw[ref.key])
            if ref.view is not None:  # an old-style storage view: a slice of the root, in its elements
                step = itemsize(ref.dtype)
                start, stop = ref.view[0] * step, (ref.view[0] + ref.view[1]) * step
                if stop > len(data):
                    raise ValueError(f"a storage view reaches byte {stop} of storage {ref.key!r}, which has {len(data)}")
                data = data[start:stop]
            decoded[cache_key] = decode_storage(data, dtype, byteorder)
        return decoded[cache_key]

    def tensor_array(tensor: TensorRef) -> np.ndarray:
        if tensor.dtype not in TORCH_DTYPES:
            raise ValueError(f"a tensor has the unknown dtype {tensor.dtype!r}")
        return view_as_array(storage_as(tensor.storage, tensor.dtype), tensor, f"storage {tensor.storage.key!r}")

    def storage_array(ref: StorageRef) -> np.ndarray:
        return np.array(storage_as(ref, ref.dtype), copy=True)

    return resolve(obj, tensor_array, storage_array)
