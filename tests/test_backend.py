"""The array backend: device names, array-module lookup, moves between devices, scatter-add, and a
second CPU-like device plugged in through register_backend (how the suite simulates a GPU)."""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from foreign_device import ForeignArray, foreign_device

import minires as mr
from minires import backend


@pytest.fixture
def foreign():
    with foreign_device() as name:
        yield name


HAS_CUPY = importlib.util.find_spec("cupy") is not None


def test_parse_device():
    assert backend.parse_device(None) == "cpu"
    assert backend.parse_device("CPU") == "cpu"
    assert backend.parse_device("cuda:0") == "cuda"
    assert backend.parse_device(SimpleNamespace(type="cpu")) == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'; expected one of 'cpu', 'cuda'"):
        backend.parse_device("tpu")
    with pytest.raises(TypeError, match="device: expected a string"):
        backend.parse_device(3)


def test_xp_of_and_device_of():
    assert backend.xp_of(np.zeros(2), None, 1.0) is np
    assert backend.xp_of() is np
    assert backend.get_xp("cpu") is np
    assert backend.device_of(np.zeros(2)) == "cpu"
    assert backend.device_of(np.float32(1)) == "cpu"
    with pytest.raises(TypeError, match="device_of: list is not an array"):
        backend.device_of([1, 2])


def test_to_device_same_device_is_no_copy():
    a = np.arange(3.0)
    assert backend.to_device(a, "cpu") is a
    assert backend.to_numpy(a) is a


def test_add_at_accumulates_repeated_indices(device):
    xp = backend.get_xp(device)
    target = xp.zeros(4)
    backend.add_at(target, xp.asarray([0, 2, 2, 2, 3]), xp.asarray([1.0, 1.0, 2.0, 3.0, 5.0]))
    np.testing.assert_array_equal(backend.to_numpy(target), [1.0, 0.0, 6.0, 5.0])
    grid = xp.zeros((2, 3))
    backend.add_at(grid, (xp.asarray([1, 1]), xp.asarray([0, 0])), xp.asarray([2.0, 3.0]))
    assert float(grid[1, 0]) == 5.0


def test_builtin_devices_cannot_be_unregistered():
    for name in ("cpu", "cuda"):
        with pytest.raises(ValueError, match="cannot be removed"):
            backend.unregister_backend(name)


def test_registered_device_round_trip(foreign):
    x = mr.tensor([1.0, 2.0], dtype=mr.float64, requires_grad=True)
    y = x.to(foreign)
    assert y.device == "foreign" and isinstance(y.data, ForeignArray)
    back = y.cpu()
    assert back.device == "cpu" and type(back.data) is np.ndarray
    np.testing.assert_array_equal(back.numpy(), [1.0, 2.0])
    # gradients flow back across the move and arrive on x's device
    z = y * mr.tensor([3.0, 4.0], dtype=mr.float64).to(foreign)
    z.backward(mr.ones(2, dtype=mr.float64).to(foreign))
    assert x.grad.device == "cpu"
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 4.0])
    assert mr.tensor([1.0], device=foreign).device == "foreign"


@pytest.fixture
def without_cupy(monkeypatch):
    """Pretend CuPy is not installed (``import cupy`` raises ImportError), even where it is (CI installs it)."""
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(backend._BACKENDS["cuda"], "_xp", None)


def test_cuda_availability_matches_cupy(without_cupy):
    assert mr.cuda.is_available() is False
    mr.cuda.synchronize()  # a no-op without a GPU


@pytest.mark.skipif(not HAS_CUPY, reason="needs CuPy installed")
def test_cupy_without_a_gpu_is_a_clear_error():
    if mr.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match=r"device 'cuda' is not available: "):
        mr.zeros(2, device="cuda")


@pytest.mark.parametrize("make", [
    lambda: mr.zeros(2, device="cuda"),
    lambda: mr.tensor([1.0], device="cuda"),
    lambda: mr.ones(2).to("cuda"),
    lambda: mr.ones(2).cuda(),
    lambda: mr.randn(2, device="cuda"),
])
def test_cuda_without_cupy_says_how_to_install(make, without_cupy):
    with pytest.raises(RuntimeError, match=r"device 'cuda' is not available.*pip install 'minires\[cuda12\]'"):
        make()


def test_tensor_to_and_dtype_conversions(device):
    x = mr.tensor([1.5, -2.5], device=device)
    assert x.to(device) is x
    assert x.double().dtype == np.float64
    assert x.half().dtype == np.float16
    assert x.long().dtype == np.int64 and x.long().numpy().tolist() == [1, -2]
    assert x.int().dtype == np.int32
    assert x.bool().dtype == np.bool_
    assert x.to(mr.float64).dtype == np.float64
    assert x.type(mr.float64).dtype == np.float64
