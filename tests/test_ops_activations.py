"""relu, sigmoid, tanh, leaky_relu, softmax, log_softmax: forward against numpy formulas written here,
gradients against finite differences, kinks and numerical stability pinned."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minires as mr
from minires.testing import arrays_away_from, float_arrays, shapes

FIXTURE_OK = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
)
SMALL = shapes(max_dims=3, max_side=4)


def leaf(array: np.ndarray, device: str) -> mr.Tensor:
    return mr.tensor(array, device=device, requires_grad=True)


@FIXTURE_OK
@given(x=arrays_away_from(SMALL, kinks=(0.0,)))
def test_relu(device, x):
    t = leaf(x, device)
    np.testing.assert_array_equal(mr.relu(t).numpy(), np.where(x > 0, x, 0.0))
    np.testing.assert_array_equal(t.relu().numpy(), np.where(x > 0, x, 0.0))
    assert mr.gradcheck(mr.relu, [t])


@FIXTURE_OK
@given(x=float_arrays(SMALL, -8.0, 8.0))
def test_sigmoid_and_tanh(device, x):
    t = leaf(x, device)
    np.testing.assert_allclose(mr.sigmoid(t).numpy(), 1 / (1 + np.exp(-x)), rtol=1e-12)
    np.testing.assert_allclose(t.tanh().numpy(), np.tanh(x), rtol=1e-12)
    assert mr.gradcheck(mr.sigmoid, [t])
    assert mr.gradcheck(mr.tanh, [t])


@FIXTURE_OK
@given(x=arrays_away_from(SMALL, kinks=(0.0,)))
def test_leaky_relu(device, x):
    from minires.ops import leaky_relu

    t = leaf(x, device)
    np.testing.assert_allclose(leaky_relu(t, 0.1).numpy(), np.where(x > 0, x, 0.1 * x))
    assert mr.gradcheck(lambda v: leaky_relu(v, 0.1), [t])


def test_relu_gradient_at_zero_is_zero(device):
    x = leaf(np.array([-1.0, 0.0, 2.0]), device)
    mr.relu(x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, 1.0])


def test_sigmoid_does_not_overflow(device):
    x = mr.tensor([-1000.0, 0.0, 1000.0], device=device, requires_grad=True)  # float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = mr.sigmoid(x)
        y.sum().backward()
    np.testing.assert_array_equal(y.numpy(), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.25, 0.0])


def np_softmax(x, dim):
    e = np.exp(x - x.max(axis=dim, keepdims=True))
    return e / e.sum(axis=dim, keepdims=True)


@FIXTURE_OK
@given(x=float_arrays(shapes(min_dims=1, max_dims=3, max_side=4), -5.0, 5.0), data=st.data())
def test_softmax_and_log_softmax(device, x, data):
    dim = data.draw(st.integers(-x.ndim, x.ndim - 1))
    t = leaf(x, device)
    expected = np_softmax(x, dim)
    np.testing.assert_allclose(mr.softmax(t, dim).numpy(), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(t.log_softmax(dim).numpy(), np.log(expected), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mr.softmax(t, dim).numpy().sum(axis=dim), 1.0, rtol=1e-12)
    # weighted, so the Jacobian is not hidden by softmax summing to one
    w = mr.tensor(np.random.default_rng(0).standard_normal(x.shape), device=device)
    assert mr.gradcheck(lambda v: mr.softmax(v, dim) * w, [t])
    assert mr.gradcheck(lambda v: mr.log_softmax(v, dim) * w, [t])


def test_softmax_is_stable_for_large_inputs(device):
    x = mr.tensor([[1000.0, 0.0, -1000.0], [-5e4, -5e4, -5e4]], device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = mr.softmax(x, dim=1).numpy()
        lp = mr.log_softmax(x, dim=1).numpy()
    np.testing.assert_allclose(p, [[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-7)
    np.testing.assert_allclose(lp, [[0.0, -1000.0, -2000.0], [-np.log(3)] * 3], rtol=1e-6)


def test_softmax_default_dim_is_last(device):
    x = mr.tensor(np.arange(6.0).reshape(2, 3), device=device)
    np.testing.assert_allclose(mr.softmax(x).numpy(), np_softmax(np.arange(6.0).reshape(2, 3), -1))


def test_softmax_rejects_several_dims(device):
    with pytest.raises(TypeError, match="softmax: dim must be a single int"):
        mr.softmax(mr.zeros(2, 3, device=device), dim=(0, 1))


def test_activations_refuse_integer_tensors(device):
    for fn in (mr.relu, mr.sigmoid, mr.tanh, mr.softmax):
        with pytest.raises(TypeError, match="expected a floating-point tensor"):
            fn(mr.tensor([1, 2], device=device))


def test_relu_of_minus_infinity_is_zero(device):
    x = mr.tensor([-np.inf, -1.0, 2.0, np.inf], device=device, requires_grad=True)
    y = mr.relu(x)
    np.testing.assert_array_equal(y.numpy(), [0.0, 0.0, 2.0, np.inf])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, 1.0, 1.0])


@settings(max_examples=25, deadline=None)
@given(
    shape=st.sampled_from([(4, 16, 32, 32), (3, 5, 37, 41), (1 << 14,), (2, 3, 64, 64)]),
    layout=st.sampled_from(["nchw", "channels-last", "reversed", "strided"]),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_relu_on_large_arrays_runs_as_rows_and_equals_maximum(shape, layout, dtype, seed) -> None:
    """Large NumPy arrays take relu_values' rows-against-a-zero-row path: same values (NaN, +-inf, -0.0
    included) and the input's memory layout; non-dense or reversed ones the plain call."""
    from minires.ops.activations import relu_values

    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    x.flat[:6] = [np.nan, -np.inf, np.inf, -0.0, 0.0, -1e-45]
    if layout == "channels-last" and x.ndim == 4:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    elif layout == "reversed":
        x = x[::-1]
    elif layout == "strided":
        x = x[..., ::2]
    y = relu_values(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert y.dtype == x.dtype and y.strides == np.empty_like(x).strides
    t = mr.tensor(x, requires_grad=True)
    out = mr.relu(t)
    np.testing.assert_array_equal(out.numpy(), np.maximum(x, 0))
    out.backward(mr.ones(*x.shape, dtype=dtype))
    np.testing.assert_array_equal(t.grad.numpy(), (x > 0).astype(dtype))
