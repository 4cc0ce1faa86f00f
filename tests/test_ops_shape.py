"""Shape ops: reshape/view, transpose/permute, flatten, squeeze/unsqueeze, expand, indexing, cat,
stack, pad. Forward against numpy; gradients against finite differences and exact scatter counts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minires as mr
from minires.testing import float_arrays, shapes

FIXTURE_OK = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
)


def leaf(array: np.ndarray, device: str) -> mr.Tensor:
    return mr.tensor(array, device=device, requires_grad=True)


@FIXTURE_OK
@given(x=float_arrays(shapes(max_dims=3, max_side=4)), data=st.data())
def test_reshape_and_view(device, x, data):
    # a target shape with the same number of elements: the factors of n, shuffled, one maybe -1
    n = x.size
    factors = [p for p in (2, 3, 5, 7) for _ in range(20) if n % p**(_ + 1) == 0]
    target = data.draw(st.permutations(factors + [1])) if factors else [1]
    target = list(target)
    if data.draw(st.booleans()):
        target[data.draw(st.integers(0, len(target) - 1))] = -1
    t = leaf(x, device)
    out = t.reshape(*target)
    np.testing.assert_array_equal(out.numpy(), x.reshape(target))
    np.testing.assert_array_equal(t.view(tuple(target)).numpy(), x.reshape(target))
    assert mr.gradcheck(lambda v: mr.reshape(v, *target) * mr.tensor(np.arange(n).reshape(target), device=device), [t])


@FIXTURE_OK
@given(x=float_arrays(shapes(min_dims=1, max_dims=4, max_side=3)), data=st.data())
def test_permute_and_transpose(device, x, data):
    order = data.draw(st.permutations(range(x.ndim)))
    t = leaf(x, device)
    np.testing.assert_array_equal(t.permute(*order).numpy(), x.transpose(order))
    weights = mr.tensor(np.random.default_rng(0).standard_normal(x.transpose(order).shape), device=device)
    assert mr.gradcheck(lambda v: v.permute(order) * weights, [t])
    d0, d1 = data.draw(st.integers(-x.ndim, x.ndim - 1)), data.draw(st.integers(-x.ndim, x.ndim - 1))
    if x.ndim >= 2:
        np.testing.assert_array_equal(t.transpose(d0, d1).numpy(), np.swapaxes(x, d0, d1))
        assert mr.gradcheck(lambda v: mr.transpose(v, d0, d1).sum(0), [t])
    np.testing.assert_array_equal(t.T.numpy(), x.T)


@FIXTURE_OK
@given(x=float_arrays(shapes(min_dims=1, max_dims=4, max_side=3)), data=st.data())
def test_flatten(device, x, data):
    s = data.draw(st.integers(0, x.ndim - 1))
    e = data.draw(st.integers(s, x.ndim - 1))
    t = leaf(x, device)
    expected = x.reshape(x.shape[:s] + (-1,) + x.shape[e + 1 :])
    np.testing.assert_array_equal(t.flatten(s, e).numpy(), expected)
    np.testing.assert_array_equal(mr.flatten(t).numpy(), x.ravel())
    assert mr.gradcheck(lambda v: mr.flatten(v, s, e).sum(0), [t])


@FIXTURE_OK
@given(x=float_arrays(shapes(max_dims=4, max_side=2)), data=st.data())
def test_squeeze_unsqueeze(device, x, data):
    t = leaf(x, device)
    np.testing.assert_array_equal(t.squeeze().numpy(), np.squeeze(x))
    ones = [i for i, n in enumerate(x.shape) if n == 1]
    if ones:
        d = data.draw(st.sampled_from(ones))
        np.testing.assert_array_equal(t.squeeze(d).numpy(), np.squeeze(x, d))
    d = data.draw(st.integers(-x.ndim - 1, x.ndim))
    np.testing.assert_array_equal(t.unsqueeze(d).numpy(), np.expand_dims(x, d))
    e = data.draw(st.integers(-np.squeeze(x).ndim - 1, np.squeeze(x).ndim))
    assert mr.gradcheck(lambda v: mr.unsqueeze(mr.squeeze(v), e) * 2, [t])


def test_squeeze_keeps_dims_that_are_not_one(device):
    x = mr.zeros(2, 1, 3, device=device)
    assert x.squeeze(0).shape == (2, 1, 3)
    assert x.squeeze(1).shape == (2, 3)


@FIXTURE_OK
@given(x=float_arrays(shapes(max_dims=3, max_side=3)), data=st.data())
def test_expand(device, x, data):
    lead = data.draw(st.lists(st.integers(1, 3), max_size=2))
    target = list(lead) + [data.draw(st.integers(1, 3)) if n == 1 else n for n in x.shape]
    t = leaf(x, device)
    out = t.expand(*target)
    np.testing.assert_array_equal(out.numpy(), np.broadcast_to(x, target))
    weights = mr.tensor(np.random.default_rng(1).standard_normal(target), device=device)
    assert mr.gradcheck(lambda v: v.expand(target) * weights, [t])


def test_expand_minus_one_keeps_the_size(device):
    x = mr.zeros(3, 1, device=device)
    assert x.expand(2, -1, 4).shape == (2, 3, 4)


BASIC_INDICES = [
    (1,), (slice(None, None, 2),), (Ellipsis, 0), (None, slice(1, 3)), (-1, slice(None, None, -1)),
    (slice(1, None), None, 0), (0, 0),
]


@pytest.mark.parametrize("index", BASIC_INDICES, ids=repr)
def test_getitem_basic(device, index):
    x = np.random.default_rng(2).standard_normal((4, 3, 2))
    t = leaf(x, device)
    np.testing.assert_array_equal(t[index].numpy(), x[index])
    assert mr.gradcheck(lambda v: v[index] * 3, [t])


ADVANCED_INDICES = [
    np.array([0, 2, 2, 0, 3]),
    (np.array([1, 1, 1]), slice(None), np.array([0, 1, 0])),
    (slice(None), np.array([[0, 2], [2, 2]])),
    np.array([True, False, True, True]),
    [3, 3, 0],
]


@pytest.mark.parametrize("index", ADVANCED_INDICES, ids=lambda i: repr(i).replace("\n", ""))
def test_getitem_advanced_repeated_indices_accumulate(device, index):
    x = np.random.default_rng(3).standard_normal((4, 3, 2))
    t = leaf(x, device)
    np.testing.assert_array_equal(t[index].numpy(), x[index])
    assert mr.gradcheck(lambda v: v[index], [t])
    # the exact gradient of sum(x[index]) counts how often each element is picked
    t[index].sum().backward()
    counts = np.zeros_like(x)
    np.add.at(counts, index if not isinstance(index, list) else np.array(index), 1.0)
    np.testing.assert_array_equal(t.grad.numpy(), counts)


def test_getitem_with_tensor_index(device):
    x = leaf(np.arange(5.0), device)
    idx = mr.tensor([4, 4, 1], device=device)
    out = x[idx]
    np.testing.assert_array_equal(out.numpy(), [4.0, 4.0, 1.0])
    out.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 1, 0, 0, 2])
    mask = x > 2
    np.testing.assert_array_equal(x[mask].numpy(), [3.0, 4.0])


@FIXTURE_OK
@given(base=shapes(min_dims=1, max_dims=3, max_side=3), data=st.data())
def test_cat(device, base, data):
    dim = data.draw(st.integers(-len(base), len(base) - 1))
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    arrays = []
    for n in sizes:
        shape = list(base)
        shape[dim] = n
        arrays.append(data.draw(float_arrays(tuple(shape))))
    ts = [leaf(a, device) for a in arrays]
    np.testing.assert_array_equal(mr.cat(ts, dim).numpy(), np.concatenate(arrays, axis=dim))
    weights = mr.tensor(np.random.default_rng(4).standard_normal(np.concatenate(arrays, axis=dim).shape), device=device)
    assert mr.gradcheck(lambda *vs: mr.cat(list(vs), dim=dim) * weights, ts)


@FIXTURE_OK
@given(shape=shapes(max_dims=3, max_side=3), n=st.integers(1, 3), data=st.data())
def test_stack(device, shape, n, data):
    dim = data.draw(st.integers(-len(shape) - 1, len(shape)))
    arrays = [data.draw(float_arrays(shape)) for _ in range(n)]
    ts = [leaf(a, device) for a in arrays]
    np.testing.assert_array_equal(mr.stack(ts, dim).numpy(), np.stack(arrays, axis=dim))
    weights = mr.tensor(np.random.default_rng(5).standard_normal(np.stack(arrays, axis=dim).shape), device=device)
    assert mr.gradcheck(lambda *vs: mr.stack(vs, dim=dim) * weights, ts)


@FIXTURE_OK
@given(x=float_arrays(shapes(min_dims=1, max_dims=3, max_side=3)), data=st.data())
def test_pad(device, x, data):
    k = data.draw(st.integers(1, x.ndim))
    pads = data.draw(st.lists(st.integers(0, 2), min_size=2 * k, max_size=2 * k))
    value = data.draw(st.sampled_from([0.0, -1.5]))
    # PyTorch's order: (last dim before, last dim after, second-to-last before, ...)
    widths = [(0, 0)] * (x.ndim - k) + [(pads[2 * i], pads[2 * i + 1]) for i in reversed(range(k))]
    t = leaf(x, device)
    np.testing.assert_array_equal(mr.pad(t, pads, value=value).numpy(), np.pad(x, widths, constant_values=value))
    assert mr.gradcheck(lambda v: mr.pad(v, pads, value=value) ** 2, [t])


def test_pad_pytorch_order(device):
    x = mr.ones(1, 2, device=device)
    out = mr.pad(x, (1, 2, 3, 0))
    assert out.shape == (4, 5)
    np.testing.assert_array_equal(out.numpy()[3], [0, 1, 1, 0, 0])


def test_shape_ops_keep_gradient_exact(device):
    x = leaf(np.arange(6.0).reshape(2, 3), device)
    y = x.T.reshape(3, 2).unsqueeze(0).expand(4, 3, 2)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.full((2, 3), 4.0))


def test_to_dtype_is_differentiable(device):
    x = leaf(np.array([1.0, 2.0]), device)
    y = x.float()
    assert y.dtype == np.float32
    (y * y).sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0])
    assert x.to(mr.float64) is x


def test_expand_refuses_minus_one_in_a_new_leading_dim(device):
    x = mr.tensor([1.0, 2.0], device=device)
    with pytest.raises(ValueError, match=r"expand: target \(-1, 2\) for shape \(2,\) has -1 at dim 0"):
        x.expand(-1, 2)
    with pytest.raises(ValueError, match=r"expand: target \(3, -2\) for shape \(2,\) has -2 at dim 1"):
        x.expand(3, -2)
    assert x.expand(3, -1).shape == (3, 2)


def test_transpose_checks_dims_on_1d_and_0d_tensors(device):
    x = mr.tensor([1.0, 2.0], device=device)
    with pytest.raises(IndexError, match="transpose: dim 5 is out of range for a tensor with 1 dimensions"):
        x.transpose(0, 5)
    assert x.transpose(0, -1).shape == (2,)


def test_list_of_index_tensors_indexes_like_a_tuple(device):
    a = np.arange(12.0).reshape(3, 4)
    x = mr.tensor(a, device=device, requires_grad=True)
    rows, cols = np.array([0, 0, 2]), np.array([1, 1, 3])
    y = x[[mr.tensor(rows, device=device), mr.tensor(cols, device=device)]]  # PyTorch: same as x[rows, cols]
    np.testing.assert_array_equal(y.numpy(), a[rows, cols])
    y.sum().backward()
    expected = np.zeros_like(a)
    np.add.at(expected, (rows, cols), 1.0)
    np.testing.assert_array_equal(x.grad.numpy(), expected)


def test_setitem_with_index_tensors_inside_a_tuple(device):
    x = mr.zeros(3, 4, device=device)
    x[(mr.tensor([0, 2], device=device), 1)] = 5.0
    x[mr.tensor([False, True, False], device=device), 3] = 7.0
    expected = np.zeros((3, 4))
    expected[[0, 2], 1] = 5.0
    expected[1, 3] = 7.0
    np.testing.assert_array_equal(x.numpy(), expected)
