"""minires.load_torch on hand-written PyTorch files (tests/torch_file_writer.py): no PyTorch needed.

Each file is assembled opcode by opcode as torch.save lays it out, in both formats, so the reader is
checked against the format itself; tests/test_torchfile_pytorch.py checks it against files PyTorch wrote.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from torch_file_writer import Call, Global, OrderedDict, Storage, Tensor, dumps, write_legacy, write_zip

import minires as mr
import minires.nn as nn
from minires.torchfile import TorchFileError, UnsafeTorchPickleError, is_torch_file, unwrap_state_dict

FORMATS = ("zip", "legacy")


def write(fmt: str, path: Path, obj: Any, storages: list[Storage], **zip_options: Any) -> Path:
    pickled = dumps(obj, legacy=fmt == "legacy")
    if fmt == "zip":
        return write_zip(path, pickled, storages, **zip_options)
    return write_legacy(path, pickled, storages)


def storage(key: str, values: np.ndarray, storage_class: str, order: str = "<") -> Storage:
    values = np.ascontiguousarray(values)
    data = values.astype(values.dtype.newbyteorder(order)).tobytes() if values.dtype.itemsize > 1 else values.tobytes()
    return Storage(key, storage_class, values.size, data)


@pytest.mark.parametrize("fmt", FORMATS)
def test_state_dict_of_a_small_net(tmp_path: Path, fmt: str) -> None:
    """A Linear + BatchNorm state dict as torch saves it: OrderedDict with _metadata, typed storages."""
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    mean, var = rng.normal(size=3).astype(np.float32), rng.uniform(0.5, 2, size=3).astype(np.float32)
    gamma, beta = rng.normal(size=3).astype(np.float32), rng.normal(size=3).astype(np.float32)
    arrays = [w, b, gamma, beta, mean, var, np.array([7], dtype=np.int64)]
    stores = [storage(str(i), a, "LongStorage" if a.dtype == np.int64 else "FloatStorage") for i, a in enumerate(arrays)]
    names = ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    items = {n: Tensor(s, 0, a.shape if n != "1.num_batches_tracked" else (), (4, 1) if a.ndim == 2 else (1,) * a.ndim)
             for n, s, a in zip(names, stores, arrays)}
    items["1.num_batches_tracked"] = Tensor(stores[-1], 0, (), ())
    path = write(fmt, tmp_path / "net.pt", {"state_dict": OrderedDict(items), "best_prec1": 91.25, "epoch": 200}, stores)

    assert is_torch_file(path)
    loaded = mr.load_torch(path)
    assert set(loaded) == {"state_dict", "best_prec1", "epoch"}
    assert loaded["best_prec1"] == 91.25 and loaded["epoch"] == 200
    state = loaded["state_dict"]
    assert type(state) is dict and list(state) == names
    for name, array in zip(names[:-1], arrays):
        assert state[name].dtype == array.dtype and np.array_equal(state[name], array)
    assert state["1.num_batches_tracked"].shape == () and state["1.num_batches_tracked"] == 7

    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    model.load_state_dict(unwrap_state_dict(loaded))  # numpy values, as load_torch returns them
    assert np.array_equal(model[0].weight.numpy(), w) and np.array_equal(model[1].running_var.numpy(), var)
    assert int(model[1].num_batches_tracked.numpy()) == 7


@pytest.mark.parametrize("fmt", FORMATS)
def test_views_sharing_one_storage(tmp_path: Path, fmt: str) -> None:
    """Offsets, transposes, steps, broadcast (stride 0) and a 0-d element of one storage, each right."""
    base = np.arange(24, dtype=np.float64) * 1.5 - 7
    s = storage("0", base, "DoubleStorage")
    views = {
        "whole": (Tensor(s, 0, (24,), (1,)), base),
        "matrix": (Tensor(s, 0, (4, 6), (6, 1)), base.reshape(4, 6)),
        "transposed": (Tensor(s, 0, (6, 4), (1, 6)), base.reshape(4, 6).T),
        "offset_block": (Tensor(s, 8, (2, 3), (6, 1)), base.reshape(4, 6)[1:3, 2:5]),
        "every_third": (Tensor(s, 1, (8,), (3,)), base[1::3]),
        "broadcast": (Tensor(s, 5, (3, 4), (0, 1)), np.broadcast_to(base[5:9], (3, 4))),
        "element": (Tensor(s, 23, (), ()), base[23]),
        "empty": (Tensor(s, 0, (0, 5), (5, 1)), np.zeros((0, 5))),
        "nchw_channels_last": (Tensor(s, 0, (1, 2, 3, 4), (24, 1, 8, 2)), base.reshape(1, 3, 4, 2).transpose(0, 3, 1, 2)),
    }
    path = write(fmt, tmp_path / "views.pt", {k: t for k, (t, _) in views.items()}, [s])
    loaded = mr.load_torch(path)
    for name, (_, expected) in views.items():
        got = loaded[name]
        assert got.shape == np.shape(expected) and got.dtype == np.float64, name
        assert np.array_equal(got, expected), name
        assert got.flags.c_contiguous and got.flags.owndata, name
    loaded["matrix"][0, 0] = 1e9  # copies: writing one never changes another
    assert loaded["whole"][0] == base[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_numeric_dtype(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(1)
    cases = {
        "FloatStorage": rng.normal(size=5).astype(np.float32), "DoubleStorage": rng.normal(size=5),
        "HalfStorage": rng.normal(size=5).astype(np.float16), "LongStorage": rng.integers(-2**62, 2**62, size=5),
        "IntStorage": rng.integers(-2**31, 2**31, size=5).astype(np.int32), "ShortStorage": np.array([-3, 0, 32767], np.int16),
        "CharStorage": np.array([-128, 5, 127], np.int8), "ByteStorage": np.array([0, 200, 255], np.uint8),
        "BoolStorage": np.array([True, False, True]), "ComplexFloatStorage": np.array([1 + 2j, -3j], np.complex64),
        "ComplexDoubleStorage": np.array([1.5 - 2j], np.complex128),
    }
    stores = {name: storage(str(i), a, name) for i, (name, a) in enumerate(cases.items())}
    obj = {name: Tensor(stores[name], 0, a.shape, (1,)) for name, a in cases.items()}
    loaded = mr.load_torch(write(fmt, tmp_path / "dtypes.pt", obj, list(stores.values())))
    for name, a in cases.items():
        assert loaded[name].dtype == a.dtype and np.array_equal(loaded[name], a), name


@pytest.mark.parametrize("fmt", FORMATS)
def test_bfloat16_widens_exactly_to_float32(tmp_path: Path, fmt: str) -> None:
    values = np.array([1.0, -2.5, 3.140625, 2.0**100, -0.0, np.inf], dtype=np.float32)  # all exact in bfloat16
    upper = (values.view(np.uint32) >> 16).astype(np.uint16)
    s = storage("0", upper, "BFloat16Storage")
    loaded = mr.load_torch(write(fmt, tmp_path / "bf16.pt", {"x": Tensor(s, 0, (6,), (1,))}, [s]))
    assert loaded["x"].dtype == np.float32 and np.array_equal(loaded["x"], values)


@pytest.mark.parametrize("fmt", FORMATS)
def test_untyped_storage_with_dtype(tmp_path: Path, fmt: str) -> None:
    """PyTorch saves uint16/32/64 tensors as an UntypedStorage (bytes) plus a torch.<dtype> (_rebuild_tensor_v3)."""
    values = np.array([0, 1, 65535, 40000], dtype=np.uint16)
    s = Storage("0", "UntypedStorage", values.nbytes, values.astype("<u2").tobytes(), module="torch.storage")
    t = Tensor(s, 1, (3,), (1,), extra=(Global("torch", "uint16"),), func="_rebuild_tensor_v3")
    loaded = mr.load_torch(write(fmt, tmp_path / "u16.pt", {"x": t, "dtype": Global("torch", "float16")}, [s]))
    assert loaded["x"].dtype == np.uint16 and np.array_equal(loaded["x"], values[1:])
    assert loaded["dtype"] == np.float16


def test_big_endian_zip(tmp_path: Path) -> None:
    """The zip format records the writer's byte order; a "big" file is byte-swapped on reading."""
    rng = np.random.default_rng(2)
    arrays = {"f": rng.normal(size=(2, 3)).astype(np.float32), "d": rng.normal(size=4), "h": rng.normal(size=3).astype(np.float16),
              "i": rng.integers(-1000, 1000, size=3), "b": np.array([True, False])}
    classes = {"f": "FloatStorage", "d": "DoubleStorage", "h": "HalfStorage", "i": "LongStorage", "b": "BoolStorage"}
    stores = {k: storage(str(i), a, classes[k], order=">") for i, (k, a) in enumerate(arrays.items())}
    obj = {k: Tensor(stores[k], 0, a.shape, (3, 1) if a.ndim == 2 else (1,)) for k, a in arrays.items()}
    big = write_zip(tmp_path / "big.pt", dumps(obj), list(stores.values()), byteorder="big")
    loaded = mr.load_torch(big)
    for k, a in arrays.items():
        assert loaded[k].dtype == a.dtype and loaded[k].dtype.isnative and np.array_equal(loaded[k], a), k
    # The same bytes marked little-endian (or unmarked: PyTorch's default) read as other numbers.
    for order in ("little", None):
        wrong = mr.load_torch(write_zip(tmp_path / f"{order}.pt", dumps(obj), list(stores.values()), byteorder=order))
        assert not np.array_equal(wrong["f"], arrays["f"])


def test_zip_without_byteorder_is_little_endian_and_any_folder_name(tmp_path: Path) -> None:
    s = storage("0", np.array([1.5, -2.0], np.float32), "FloatStorage")
    path = write_zip(tmp_path / "x.pth", dumps({"w": Tensor(s, 0, (2,), (1,))}), [s], byteorder=None, folder="my_model")
    assert np.array_equal(mr.load_torch(path)["w"], [1.5, -2.0])


@pytest.mark.parametrize("fmt", FORMATS)
def test_nested_containers_and_shared_objects(tmp_path: Path, fmt: str) -> None:
    s = storage("0", np.arange(4, dtype=np.float32), "FloatStorage")
    t = Tensor(s, 0, (4,), (1,))
    obj = {"a": {"b": {"c": t}}, "list": [t, 1, "x", None, True], "tuple": (2.5, t), "size": Call(Global("torch", "Size"), ((2, 3),)),
           "params": Call(Global("torch._utils", "_rebuild_parameter"), (t, True, {})), "bytes": b"\x00\xff raw"}
    loaded = mr.load_torch(write(fmt, tmp_path / "nested.pt", obj, [s]))
    assert np.array_equal(loaded["a"]["b"]["c"], np.arange(4))
    assert loaded["list"][1:] == [1, "x", None, True] and loaded["tuple"][0] == 2.5
    assert loaded["size"] == (2, 3) and np.array_equal(loaded["params"], np.arange(4))
    assert loaded["bytes"] == b"\x00\xff raw"


class _System:
    """Unpickles to os.system(...) with pickle (the global is posix.system on Linux)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.system, (self.command,)


class _Eval:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return eval, (self.code,)


def _hostile_payloads(marker: Path) -> dict[str, bytes]:
    return {
        "system": pickle.dumps({"state_dict": {"w": _System(f"touch {marker}")}}, protocol=2),
        "eval": pickle.dumps([_Eval(f"open({str(marker)!r}, 'w').close()")], protocol=2),
        "exec": dumps({"x": Call(Global("builtins", "exec"), (f"open({str(marker)!r}, 'w').close()",))}),
        "os.system": dumps(Call(Global("os", "system"), (f"touch {marker}",))),
    }


def test_hostile_payloads_really_are_hostile(tmp_path: Path) -> None:
    """The payloads below do create the marker when a normal unpickler reads them."""
    marker = tmp_path / "pwned"
    for name, payload in _hostile_payloads(marker).items():
        if name in ("system", "os.system") and os.name != "posix":
            continue
        pickle.loads(payload)
        assert marker.exists(), name
        marker.unlink()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("payload", ["system", "eval", "exec", "os.system"])
def test_hostile_pickle_is_refused_and_never_runs(tmp_path: Path, fmt: str, payload: str) -> None:
    marker = tmp_path / "pwned"
    pickled = _hostile_payloads(marker)[payload]
    path = tmp_path / f"evil.{fmt}"
    write_zip(path, pickled, []) if fmt == "zip" else write_legacy(path, pickled, [])
    with pytest.raises(UnsafeTorchPickleError) as info:
        mr.load_torch(path)
    message = str(info.value)
    assert str(path) in message and "refused" in message
    assert any(name in message for name in ("posix.system", "os.system", "__builtin__.eval", "builtins.exec"))
    assert not marker.exists()


def test_hostile_header_pickle_in_legacy_file(tmp_path: Path) -> None:
    """Even the legacy format's first pickle (where the magic number belongs) cannot run code."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_Eval(f"open({str(marker)!r}, 'w').close()"), protocol=2))
    with pytest.raises(UnsafeTorchPickleError, match=r"__builtin__\.eval"):
        mr.load_torch(path)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("obj", "named"), [
    (Call(Global("torch.nn.modules.conv", "Conv2d"), ()), "torch.nn.modules.conv.Conv2d"),
    (Call(Global("torch._utils", "_rebuild_qtensor"), ()), "torch._utils._rebuild_qtensor"),
    (Global("torch", "QInt8Storage"), "torch.QInt8Storage"),
    (Global("torch", "float8_e4m3fn"), "torch.float8_e4m3fn"),
    (Call(Global("torch", "device"), ("cpu",)), "torch.device"),
    (Call(Global("collections", "defaultdict"), ()), "collections.defaultdict"),
    (Call(Global("copyreg", "_reconstructor"), ()), "copyreg._reconstructor"),
])
def test_globals_outside_the_list_are_refused(tmp_path: Path, fmt: str, obj: Any, named: str) -> None:
    path = write(fmt, tmp_path / "x.pt", {"x": obj}, [])
    with pytest.raises(UnsafeTorchPickleError, match=named.replace(".", r"\.")):
        mr.load_torch(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_state_cannot_be_set_on_a_tensor(tmp_path: Path, fmt: str) -> None:
    """BUILD on a rebuilt tensor (ndarray.__setstate__ could forge memory) is refused."""
    from torch_file_writer import Build

    s = storage("0", np.zeros(2, np.float32), "FloatStorage")
    obj = {"x": Build(Tensor(s, 0, (2,), (1,)), ((2,), "f8", False, b"\0" * 16))}
    with pytest.raises(UnsafeTorchPickleError, match="state"):
        mr.load_torch(write(fmt, tmp_path / "x.pt", obj, [s]))


def test_pickled_module_persistent_id_is_refused(tmp_path: Path) -> None:
    from torch_file_writer import PersistentId

    path = write_legacy(tmp_path / "model.pt", dumps(PersistentId(("module", "Net", "net.py", "class Net: ..."))), [])
    with pytest.raises(UnsafeTorchPickleError, match="state_dict"):
        mr.load_torch(path)


def _small_file(tmp_path: Path, fmt: str) -> Path:
    a, b = storage("0", np.arange(6, dtype=np.float32), "FloatStorage"), storage("1", np.arange(3), "LongStorage")
    obj = {"state_dict": OrderedDict({"w": Tensor(a, 0, (2, 3), (3, 1)), "n": Tensor(b, 1, (2,), (1,))}), "best_prec1": 90.0}
    return write(fmt, tmp_path / f"small.{fmt}", obj, [a, b])


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_truncation_is_a_clear_error(tmp_path: Path, fmt: str) -> None:
    path = _small_file(tmp_path, fmt)
    data = path.read_bytes()
    assert np.array_equal(mr.load_torch(path)["state_dict"]["w"], np.arange(6).reshape(2, 3))
    cut = tmp_path / "cut.pt"
    for n in range(len(data)):
        cut.write_bytes(data[:n])
        with pytest.raises(TorchFileError) as info:
            mr.load_torch(cut)
        assert str(cut) in str(info.value), n


def test_zip_corruption_is_caught_or_harmless(tmp_path: Path) -> None:
    """Flip each byte of a zip file in turn: the reader either raises TorchFileError or (a flip in a field it
    does not use) returns the same arrays; a flipped storage or pickle byte always fails its CRC."""
    path = _small_file(tmp_path, "zip")
    data = bytearray(path.read_bytes())
    good = mr.load_torch(path)["state_dict"]
    bad = tmp_path / "bad.pt"
    failures = 0
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0xFF
        bad.write_bytes(bytes(flipped))
        try:
            state = mr.load_torch(bad)["state_dict"]
        except TorchFileError as exc:
            assert str(bad) in str(exc)
            failures += 1
            continue
        assert all(np.array_equal(state[k], good[k]) for k in good), i
    assert failures > len(data) // 2


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d, tail: d[:tail] + (99).to_bytes(8, "little") + d[tail + 8:], "header says 99"),
    (lambda d, tail: d[:40] + b"\xff" * 8 + d[48:], "not a readable PyTorch legacy file"),
    (lambda d, tail: b"\x80\x02K\x05." + d, "magic number"),
])
def test_corrupt_legacy_files(tmp_path: Path, edit: Callable[[bytes, int], bytes], message: str) -> None:
    path = _small_file(tmp_path, "legacy")
    data = path.read_bytes()
    tail = len(data) - (8 + 6 * 4) - (8 + 3 * 8)  # the first storage's count: storages "0" then "1"
    assert int.from_bytes(data[tail:tail + 8], "little") == 6
    path.write_bytes(edit(data, tail))
    with pytest.raises(TorchFileError, match=message) as info:
        mr.load_torch(path)
    assert str(path) in str(info.value)


def test_storage_size_mismatch_in_zip(tmp_path: Path) -> None:
    s = storage("0", np.arange(4, dtype=np.float32), "FloatStorage")
    short = Storage("0", "FloatStorage", 5, s.data)  # the pickle says 5 elements, the record holds 4
    path = write_zip(tmp_path / "x.pt", dumps({"w": Tensor(short, 0, (4,), (1,))}), [short])
    with pytest.raises(TorchFileError, match="should hold 5 float32 values"):
        mr.load_torch(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tensor_reaching_past_its_storage(tmp_path: Path, fmt: str) -> None:
    s = storage("0", np.arange(6, dtype=np.float32), "FloatStorage")
    path = write(fmt, tmp_path / "x.pt", {"w": Tensor(s, 2, (2, 3), (3, 1))}, [s])
    with pytest.raises(TorchFileError, match="reaches element 7"):
        mr.load_torch(path)


def test_not_torch_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no file"):
        mr.load_torch(tmp_path / "missing.pt")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(TorchFileError, match="empty"):
        mr.load_torch(empty)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(TorchFileError, match="magic number"):
        mr.load_torch(text)
    npz = tmp_path / "weights.npz"
    mr.save({"w": np.ones(2)}, npz)
    assert not is_torch_file(npz)
    with pytest.raises(TorchFileError, match="data.pkl"):
        mr.load_torch(npz)
    tar = tmp_path / "old.pt"
    tar.write_bytes(b"\0" * 257 + b"ustar" + b"\0" * 250)
    with pytest.raises(TorchFileError, match="tar-based format"):
        mr.load_torch(tar)


def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "scripted.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("m/data.pkl", dumps({}))
        z.writestr("m/constants.pkl", dumps(()))
        z.writestr("m/code/__torch__/m.py", "def forward(self): ...")
    with pytest.raises(TorchFileError, match="TorchScript"):
        mr.load_torch(path)


def test_unwrap_state_dict() -> None:
    w = np.ones(2)
    assert unwrap_state_dict({"state_dict": {"module.a.w": w, "module.b": w}, "best_prec1": 1.0}) == {"a.w": w, "b": w}
    assert list(unwrap_state_dict({"model": {"module.a": w, "b": w}})) == ["module.a", "b"]  # only when all keys have it
    with pytest.raises(ValueError, match="not a state dict"):
        unwrap_state_dict({"epoch": 3, "w": w})


def test_load_state_dict_hints_at_wrapped_checkpoints() -> None:
    from minires.models import resnet20

    model = resnet20()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"under 'state_dict': pass mr.unwrap_state_dict"):
        model.load_state_dict({"state_dict": state, "best_prec1": 91.0})
    with pytest.raises(RuntimeError, match=r"starts with 'module.'"):
        model.load_state_dict({"module." + k: v for k, v in state.items()})
    with pytest.raises(RuntimeError) as info:
        model.load_state_dict({**state, "extra": np.ones(1)})
    assert "unwrap_state_dict" not in str(info.value)
    model.load_state_dict(unwrap_state_dict({"state_dict": {"module." + k: v for k, v in state.items()}}))


def test_legacy_storage_views(tmp_path: Path) -> None:
    """Files from old PyTorch name slices of a storage: ('storage', ..., (view_key, offset, numel))."""
    from torch_file_writer import PersistentId

    base = np.arange(10, dtype=np.float32) * 2
    s = storage("root", base, "FloatStorage")
    view = PersistentId(("storage", Global("torch", "FloatStorage"), "root", "cpu", 10, ("view1", 4, 5)))
    rebuild = Global("torch._utils", "_rebuild_tensor")
    obj = {"v": Call(rebuild, (view, 1, (3,), (1,))), "whole": Call(rebuild, (s.pid(legacy=True), 0, (10,), (1,)))}
    loaded = mr.load_torch(write_legacy(tmp_path / "old.pt", dumps(obj, legacy=True), [s]))
    assert np.array_equal(loaded["v"], base[5:8]) and np.array_equal(loaded["whole"], base)
    past = {"v": Call(rebuild, (view, 3, (3,), (1,)))}  # elements 3..5 of a 5-element view: past its end
    with pytest.raises(TorchFileError, match="reaches element 5"):
        mr.load_torch(write_legacy(tmp_path / "past.pt", dumps(past, legacy=True), [s]))


def test_one_storage_named_with_two_sizes(tmp_path: Path) -> None:
    s = storage("0", np.arange(4, dtype=np.float32), "FloatStorage")
    other = Storage("0", "FloatStorage", 3, s.data)
    obj = {"a": Tensor(s, 0, (4,), (1,)), "b": Tensor(other, 0, (3,), (1,))}
    with pytest.raises(TorchFileError, match="named as 4 float32 values and as 3 float32"):
        mr.load_torch(write_zip(tmp_path / "x.pt", dumps(obj), [s]))


def test_plain_builtins(tmp_path: Path) -> None:
    b = Global("builtins", "bytearray")
    obj = {"set": Call(Global("builtins", "set"), ([1, 2],)), "c": Call(Global("builtins", "complex"), (1.0, 2.0)),
           "ba": Call(b, (b"\x01\x02",)), "ba_text": Call(b, ("hi", "latin1"))}
    loaded = mr.load_torch(write_zip(tmp_path / "x.pt", dumps(obj), []))
    assert loaded == {"set": {1, 2}, "c": 1 + 2j, "ba": bytearray(b"\x01\x02"), "ba_text": bytearray(b"hi")}
    with pytest.raises(UnsafeTorchPickleError, match="bytearray"):
        mr.load_torch(write_zip(tmp_path / "big.pt", dumps({"x": Call(b, (10**12,))}), []))
