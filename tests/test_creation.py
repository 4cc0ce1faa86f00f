"""Creation functions: dtypes (float32 default, float64 kept), shapes, copies vs shared memory, seeding."""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr


def test_tensor_default_dtypes(device):
    assert mr.tensor([1.0, 2.0], device=device).dtype == np.float32
    assert mr.tensor(3.5, device=device).dtype == np.float32
    assert mr.tensor([1, 2], device=device).dtype == np.int64
    assert mr.tensor([True, False], device=device).dtype == np.bool_
    assert mr.tensor(np.zeros(2), device=device).dtype == np.float64  # arrays keep their dtype
    assert mr.tensor(np.zeros(2, dtype=np.float32), device=device).dtype == np.float32
    assert mr.tensor([1, 2], dtype=mr.float64, device=device).dtype == np.float64
    assert mr.tensor(np.zeros(2), dtype=mr.float32, device=device).dtype == np.float32


def test_tensor_values_shape_and_device(device):
    t = mr.tensor([[1, 2, 3], [4, 5, 6]], dtype=mr.float32, device=device)
    assert t.shape == (2, 3) and t.ndim == 2 and t.numel() == 6 and len(t) == 2
    assert t.device == device
    np.testing.assert_array_equal(t.numpy(), [[1, 2, 3], [4, 5, 6]])
    assert t.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert mr.tensor(2.5, device=device).item() == 2.5


def test_tensor_copies_but_as_tensor_shares(device):
    a = np.array([1.0, 2.0])
    t = mr.tensor(a)
    a[0] = 99.0
    assert t.numpy()[0] == 1.0
    s = mr.as_tensor(a)
    a[1] = -5.0
    assert s.numpy()[1] == -5.0
    u = mr.tensor(t)
    t.data[0] = 7.0
    assert u.numpy()[0] == 1.0


def test_tensor_requires_grad_flag(device):
    t = mr.tensor([1.0], device=device, requires_grad=True)
    assert t.requires_grad and t.is_leaf and t.grad is None
    assert "requires_grad=True" in repr(t)


def test_tensor_refuses_ragged_data():
    with pytest.raises(TypeError, match="tensor: cannot make a tensor"):
        mr.tensor([[1.0, 2.0], [3.0]])


def test_filled_constructors(device):
    z = mr.zeros(2, 3, device=device)
    assert z.shape == (2, 3) and z.dtype == np.float32 and not z.numpy().any()
    assert mr.zeros((2, 3), device=device).shape == (2, 3)
    o = mr.ones(4, dtype=mr.float64, device=device, requires_grad=True)
    assert o.dtype == np.float64 and o.requires_grad
    np.testing.assert_array_equal(o.numpy(), np.ones(4))
    f = mr.full((2, 2), 7.5, device=device)
    np.testing.assert_array_equal(f.numpy(), np.full((2, 2), 7.5))
    assert mr.full(3, 1.0, device=device).shape == (3,)
    np.testing.assert_array_equal(mr.eye(3, device=device).numpy(), np.eye(3))
    assert mr.eye(2, 3, device=device).shape == (2, 3)


def test_like_constructors(device):
    base = mr.tensor(np.ones((2, 3)), device=device)
    for made in (mr.zeros_like(base), mr.ones_like(base), mr.full_like(base, 3.0)):
        assert made.shape == (2, 3) and made.dtype == np.float64 and made.device == device
    np.testing.assert_array_equal(mr.full_like(base, 3.0).numpy(), np.full((2, 3), 3.0))
    assert mr.zeros_like(base, dtype=mr.float32).dtype == np.float32


def test_arange_and_linspace(device):
    a = mr.arange(5, device=device)
    assert a.dtype == np.int64
    np.testing.assert_array_equal(a.numpy(), np.arange(5))
    b = mr.arange(0, 1, 0.25, device=device)
    assert b.dtype == np.float32
    np.testing.assert_allclose(b.numpy(), [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(mr.linspace(0, 1, 5, device=device).numpy(), np.linspace(0, 1, 5))


def test_random_constructors_and_manual_seed(device):
    mr.manual_seed(123)
    a = mr.randn(3, 4, device=device)
    b = mr.rand(5, device=device)
    i = mr.randint(0, 10, (6,), device=device)
    p = mr.randperm(7, device=device)
    mr.manual_seed(123)
    np.testing.assert_array_equal(mr.randn(3, 4, device=device).numpy(), a.numpy())
    np.testing.assert_array_equal(mr.rand(5, device=device).numpy(), b.numpy())
    np.testing.assert_array_equal(mr.randint(0, 10, (6,), device=device).numpy(), i.numpy())
    np.testing.assert_array_equal(mr.randperm(7, device=device).numpy(), p.numpy())
    assert a.shape == (3, 4) and a.dtype == np.float32
    assert ((b.numpy() >= 0) & (b.numpy() < 1)).all()
    assert i.dtype == np.int64 and ((i.numpy() >= 0) & (i.numpy() < 10)).all()
    assert sorted(p.numpy().tolist()) == list(range(7))
    assert not np.array_equal(mr.randn(3, 4, device=device).numpy(), a.numpy())  # the stream moves on


def test_randn_statistics_and_dtype(device):
    x = mr.randn(20000, dtype=mr.float64, device=device).numpy()
    assert x.dtype == np.float64
    assert abs(x.mean()) < 0.05 and abs(x.std() - 1) < 0.05


def test_rng_state_round_trip():
    state = mr.get_rng_state()
    a = mr.randn(3).numpy()
    mr.set_rng_state(state)
    np.testing.assert_array_equal(mr.randn(3).numpy(), a)


def test_bad_sizes_and_dtypes():
    with pytest.raises(ValueError, match="size: dims must be >= 0"):
        mr.zeros(2, -1)
    with pytest.raises(TypeError, match="dtype"):
        mr.zeros(2, dtype="not-a-dtype-at-all")


def test_tensor_refuses_non_numeric_data():
    with pytest.raises(TypeError, match="tensor: cannot make a tensor"):
        mr.tensor(["a", "b"])
    with pytest.raises(TypeError, match="tensor: cannot make a tensor"):
        mr.tensor([object()])


def test_full_infers_the_dtype_from_the_fill_value(device):
    assert mr.full((2,), 3, device=device).dtype == np.int64
    assert mr.full((2,), True, device=device).dtype == np.bool_
    assert mr.full((2,), 1.5, device=device).dtype == np.float32
    assert mr.full((2,), 3, dtype=mr.float64, device=device).dtype == np.float64
    np.testing.assert_array_equal(mr.full((2,), 3, device=device).numpy(), [3, 3])
