"""minires.load_torch on files PyTorch itself wrote, in both formats, compared with torch.load.

Runs where torch is installed (CI installs the CPU build as a test oracle); minires never imports it.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import minires as mr
from minires.torchfile import TorchFileError, UnsafeTorchPickleError

torch = pytest.importorskip("torch")

FORMATS = ("zip", "legacy")


def save(obj: Any, path: Path, fmt: str) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    return path


def as_numpy(t: Any) -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()  # minires widens bfloat16 to float32 (exactly)
    return t.resolve_conj().resolve_neg().numpy()


def assert_same(got: Any, expected: Any, where: str = "") -> None:
    """``got`` (from load_torch) holds exactly what ``expected`` (from torch.load) holds."""
    if isinstance(expected, torch.Tensor):
        want = as_numpy(expected)
        assert isinstance(got, np.ndarray), where
        assert got.dtype == want.dtype and got.shape == want.shape, (where, got.dtype, want.dtype, got.shape, want.shape)
        assert np.array_equal(got, want, equal_nan=got.dtype.kind in "fc"), where
    elif isinstance(expected, dict):
        assert type(got) is dict and list(got) == list(expected), where
        for k in expected:
            assert_same(got[k], expected[k], f"{where}.{k}")
    elif isinstance(expected, (list, tuple)):
        assert type(got) is type(expected) or isinstance(expected, torch.Size), where
        assert len(got) == len(expected), where
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_same(g, e, f"{where}[{i}]")
    elif isinstance(expected, torch.dtype):
        assert got == as_numpy(torch.zeros(1, dtype=expected)).dtype, where
    else:
        assert got == expected and type(got) is type(expected), where


def checkpoint() -> dict[str, Any]:
    """What published checkpoints hold, plus every kind of view and dtype a weights file can carry."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    net(torch.randn(2, 3, 3, 3))  # moves BN running stats and num_batches_tracked
    base = torch.randn(6, 8, dtype=torch.float64)
    base[0, 0], base[0, 1] = float("nan"), float("inf")
    shared = torch.arange(30, dtype=torch.float32)
    conj = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    negated = torch.tensor([5 + 6j, 7 - 8j], dtype=torch.complex64).conj().imag  # a float32 view with the neg bit
    return {
        "state_dict": net.state_dict(),
        "best_prec1": 93.39,
        "epoch": 182,
        "arch": "resnet56",
        "views": {
            "base": base, "transposed": base.t(), "offset_block": base[2:5, 3:7], "strided": base[::2, 1::3],
            "row": base[4], "element": base[5, 7], "expanded": base[1, :3].expand(4, 3),
            "permuted": torch.randn(2, 3, 4, 5).permute(0, 2, 3, 1), "channels_last": torch.randn(2, 3, 4, 5).to(
                memory_format=torch.channels_last),
        },
        "shared": [shared, shared[10:20].view(2, 5), shared[5:].view(5, 5).t(), shared],
        "dtypes": {
            "float16": torch.randn(7).half(), "float64": torch.randn(3, 2, dtype=torch.float64),
            "int64": torch.randint(-2**40, 2**40, (4,)), "int32": torch.randint(-9, 9, (3,), dtype=torch.int32),
            "int16": torch.tensor([-3, 300], dtype=torch.int16), "int8": torch.tensor([-128, 127], dtype=torch.int8),
            "uint8": torch.tensor([0, 255], dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
            "bfloat16": torch.randn(5).bfloat16(), "complex64": conj.conj(), "neg_view": negated,
            "complex128": torch.randn(2, dtype=torch.complex128), "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5),
        },
        "param": torch.nn.Parameter(torch.randn(3)),
        "size": torch.Size([64, 16, 3, 3]),
        "dtype": torch.float16,
        "nested": collections.OrderedDict(a={"b": {"c": torch.ones(2)}}, t=(1, 2.5, "x", None, True)),
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_matches_torch_load(tmp_path: Path, fmt: str) -> None:
    path = save(checkpoint(), tmp_path / "ckpt.pt", fmt)
    expected = torch.load(path, weights_only=False)
    got = mr.load_torch(path)
    assert_same(got, expected)
    assert got["shared"][0] is got["shared"][3]  # one tensor saved twice (pickle memo) is one array
    for array in got["views"].values():
        assert array.flags.c_contiguous and array.flags.owndata


@pytest.mark.parametrize("fmt", FORMATS)
def test_gpu_style_storage_classes(tmp_path: Path, fmt: str) -> None:
    """Checkpoints saved on a GPU name torch.cuda.FloatStorage and location 'cuda:0': read onto the CPU."""
    path = save({"w": torch.arange(6.0).view(2, 3)}, tmp_path / "gpu.pt", fmt)
    if fmt == "zip":
        with zipfile.ZipFile(path) as z:
            records = {n: z.read(n) for n in z.namelist()}
        name = next(n for n in records if n.endswith("data.pkl"))
        records[name] = records[name].replace(b"ctorch\nFloatStorage", b"ctorch.cuda\nFloatStorage").replace(*CPU_TO_CUDA)
        path.unlink()
        with zipfile.ZipFile(path, "w") as z:
            for n, data in records.items():
                z.writestr(n, data)
    else:
        data = path.read_bytes()
        path.write_bytes(data.replace(b"ctorch\nFloatStorage", b"ctorch.cuda\nFloatStorage").replace(*CPU_TO_CUDA))
    assert b"torch.cuda" in (zipfile.ZipFile(path).read(name) if fmt == "zip" else path.read_bytes())
    assert np.array_equal(mr.load_torch(path)["w"], np.arange(6.0).reshape(2, 3))


CPU_TO_CUDA = (b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")  # BINUNICODE 'cpu' -> 'cuda:0'


def big_endian_copy(path: Path, out: Path) -> Path:
    """``path`` (a little-endian zip from torch.save) rewritten as a big-endian machine would write it: each
    storage's elements byte-swapped and the byteorder record saying "big". Storage i holds the i-th tensor."""
    obj = torch.load(path, weights_only=True)
    sizes = [t.element_size() for t in obj.values()]
    with zipfile.ZipFile(path) as z, zipfile.ZipFile(out, "w") as w:
        for info in z.infolist():
            data = z.read(info)
            folder, _, rest = info.filename.partition("/")
            if rest == "byteorder":
                data = b"big"
            elif rest.startswith("data/"):
                size = sizes[int(rest[len("data/"):])]
                data = np.frombuffer(data, dtype=f"<u{size}" if size > 1 else "u1").byteswap().tobytes()
            w.writestr(info, data)
    return out


def test_big_endian_zip_written_by_hand_from_a_torch_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    obj = {"f32": torch.randn(3, 4), "f64": torch.randn(5, dtype=torch.float64), "f16": torch.randn(6).half(),
           "i64": torch.randint(-2**40, 2**40, (3,)), "i32": torch.randint(-99, 99, (4,), dtype=torch.int32),
           "bool": torch.tensor([True, False]), "bf16": torch.randn(3).bfloat16()}
    little = save(obj, tmp_path / "little.pt", "zip")
    big = big_endian_copy(little, tmp_path / "big.pt")
    reloaded = torch.load(big, weights_only=True)  # PyTorch agrees the crafted file is right
    assert all(torch.equal(reloaded[k], obj[k]) for k in obj)
    assert_same(mr.load_torch(big), obj)
    assert not np.array_equal(mr.load_torch(little)["f32"], mr.load_torch(big)["f32"].byteswap())


class _Marker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.path}",)


class _EvalMarker(_Marker):
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return eval, (f"open({str(self.path)!r}, 'w').close()",)


@pytest.mark.skipif(os.name != "posix", reason="the payload uses touch")
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("payload", [_Marker, _EvalMarker])
def test_hostile_torch_save_is_refused_and_never_runs(tmp_path: Path, fmt: str, payload: type) -> None:
    """torch.save of a checkpoint with a booby-trapped entry: torch.load(weights_only=False) would run it."""
    marker = tmp_path / "pwned"
    path = save({"state_dict": {"w": torch.ones(2)}, "extra": payload(marker)}, tmp_path / "evil.pt", fmt)
    torch.load(path, weights_only=False)
    assert marker.exists()  # the payload is real
    marker.unlink()
    with pytest.raises(UnsafeTorchPickleError) as info:
        mr.load_torch(path)
    assert str(path) in str(info.value)
    assert "posix.system" in str(info.value) or "__builtin__.eval" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_whole_pickled_model_is_refused(tmp_path: Path, fmt: str) -> None:
    path = save(torch.nn.Linear(2, 2), tmp_path / "model.pt", fmt)
    with pytest.raises(UnsafeTorchPickleError, match="state_dict"):
        mr.load_torch(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_torch_files(tmp_path: Path, fmt: str) -> None:
    path = save({"state_dict": torch.nn.Linear(20, 10).state_dict(), "best_prec1": 1.0}, tmp_path / "x.pt", fmt)
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    for n in sorted({0, 1, 10, 100, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 9, len(data) - 1}):
        cut.write_bytes(data[:n])
        with pytest.raises(TorchFileError) as info:
            mr.load_torch(cut)
        assert str(cut) in str(info.value)


def test_corrupted_zip_storage_fails_its_checksum(tmp_path: Path) -> None:
    path = save({"w": torch.randn(100)}, tmp_path / "x.pt", "zip")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data/0"))
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # the local header, then the stored bytes
    data[start + 17] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.raises(TorchFileError, match="CRC|corrupt"):
        mr.load_torch(path)


def test_pickle_bytes_corrupted_in_legacy_file(tmp_path: Path) -> None:
    path = save({"state_dict": torch.nn.Linear(3, 2).state_dict()}, tmp_path / "x.pt", "legacy")
    data = bytearray(path.read_bytes())
    position = data.index(b"_rebuild_tensor_v2")
    data[position:position + 18] = b"_rebuild_tensor_v9"
    path.write_bytes(bytes(data))
    with pytest.raises(UnsafeTorchPickleError, match="_rebuild_tensor_v9"):
        mr.load_torch(path)


def test_legacy_file_has_the_documented_layout(tmp_path: Path) -> None:
    """Magic, protocol 1001, system info, object, sorted keys, then int64 count + bytes per storage."""
    path = save({"a": torch.arange(3.0), "b": torch.tensor([7], dtype=torch.int64)}, tmp_path / "x.pt", "legacy")
    stream = io.BytesIO(path.read_bytes())
    assert pickle.load(stream) == 0x1950A86A20F9469CFC6C and pickle.load(stream) == 1001
    assert pickle.load(stream)["little_endian"] is True
    stream.read()  # (the object pickle needs persistent_load; load_torch reads it)
    loaded = mr.load_torch(path)
    assert np.array_equal(loaded["a"], [0.0, 1.0, 2.0]) and loaded["a"].dtype == np.float32
    assert loaded["b"].tolist() == [7]
