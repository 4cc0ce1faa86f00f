"""Elementwise ops: forward values against numpy, gradients against finite differences (float64),
broadcasting, Python scalars / numpy arrays on either side, comparisons, and the kink conventions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minires as mr
from minires.testing import arrays_away_from, arrays_without_ties, broadcastable_shapes, float_arrays, shapes

# the `device` fixture only returns a string, so reusing it across hypothesis examples is safe
FIXTURE_OK = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
)
SMALL = shapes(max_dims=3, max_side=4)


def leaf(array: np.ndarray, device: str) -> mr.Tensor:
    return mr.tensor(array, device=device, requires_grad=True)


@st.composite
def broadcast_pair(draw, low=-3.0, high=3.0, away_from_zero=False):
    sa, sb = draw(broadcastable_shapes(2, max_dims=3, max_side=4))
    if away_from_zero:
        return draw(arrays_away_from(sa, (0.0,), margin=0.5, low=low, high=high)), draw(
            arrays_away_from(sb, (0.0,), margin=0.5, low=low, high=high)
        )
    return draw(float_arrays(sa, low, high)), draw(float_arrays(sb, low, high))


@st.composite
def untied_pair(draw):
    """Two broadcastable arrays with no value shared between them (no ties for maximum/minimum)."""
    sa, sb = draw(broadcastable_shapes(2, max_dims=3, max_side=4))
    na, nb = int(np.prod(sa)), int(np.prod(sb))
    values = draw(arrays_without_ties((na + nb,)))
    return values[:na].reshape(sa), values[na:].reshape(sb)


BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@FIXTURE_OK
@given(pair=broadcast_pair())
def test_binary_arithmetic_with_broadcasting(device, name, pair):
    op, ref = BINARY[name]
    a, b = leaf(pair[0], device), leaf(pair[1], device)
    out = op(a, b)
    np.testing.assert_allclose(out.numpy(), ref(pair[0], pair[1]), rtol=1e-12, atol=0)
    assert out.shape == np.broadcast_shapes(pair[0].shape, pair[1].shape)
    assert mr.gradcheck(op, [a, b])


@FIXTURE_OK
@given(pair=broadcast_pair(away_from_zero=True))
def test_div_with_broadcasting(device, pair):
    a, b = leaf(pair[0], device), leaf(pair[1], device)
    np.testing.assert_allclose((a / b).numpy(), pair[0] / pair[1], rtol=1e-12)
    assert mr.gradcheck(lambda x, y: x / y, [a, b])


@FIXTURE_OK
@given(pair=broadcast_pair())
def test_pow_tensor_exponent(device, pair):
    base = np.abs(pair[0]) + 0.5  # positive base: a**b and its log-derivative are defined
    a, b = leaf(base, device), leaf(pair[1] / 2, device)
    np.testing.assert_allclose((a**b).numpy(), base ** (pair[1] / 2), rtol=1e-12)
    assert mr.gradcheck(lambda x, y: x**y, [a, b])


@pytest.mark.parametrize("exponent", [2, 3, -1, 0.5, 2.5])
@FIXTURE_OK
@given(x=float_arrays(SMALL, 0.2, 3.0))
def test_pow_scalar_exponent(device, exponent, x):
    t = leaf(x, device)
    np.testing.assert_allclose((t**exponent).numpy(), x**exponent, rtol=1e-12)
    assert mr.gradcheck(lambda v: v**exponent, [t])


@FIXTURE_OK
@given(x=float_arrays(SMALL, -3.0, 3.0))
def test_integer_power_of_negative_base_and_rpow(device, x):
    t = leaf(x, device)
    np.testing.assert_allclose((t**3).numpy(), x**3, rtol=1e-12)
    assert mr.gradcheck(lambda v: v**3, [t])
    np.testing.assert_allclose((2**t).numpy(), 2.0**x, rtol=1e-12)
    assert mr.gradcheck(lambda v: 2**v, [t])


UNARY = {
    "neg": (lambda t: -t, np.negative, float_arrays(SMALL)),
    "exp": (mr.exp, np.exp, float_arrays(SMALL)),
    "log": (mr.log, np.log, float_arrays(SMALL, 0.1, 5.0)),
    "sqrt": (mr.sqrt, np.sqrt, float_arrays(SMALL, 0.1, 5.0)),
    "abs": (mr.abs, np.abs, arrays_away_from(SMALL, (0.0,))),
    "tanh": (mr.tanh, np.tanh, float_arrays(SMALL)),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@FIXTURE_OK
@given(data=st.data())
def test_unary(device, name, data):
    op, ref, values = UNARY[name]
    x = data.draw(values)
    t = leaf(x, device)
    np.testing.assert_allclose(op(t).numpy(), ref(x), rtol=1e-12, atol=1e-300)
    assert mr.gradcheck(op, [t])


def test_tensor_methods_match_functions(device):
    x = mr.tensor([0.5, 1.5, 2.5], dtype=mr.float64, device=device)
    for method, fn in [("exp", mr.exp), ("log", mr.log), ("sqrt", mr.sqrt), ("abs", mr.abs), ("tanh", mr.tanh)]:
        np.testing.assert_array_equal(getattr(x, method)().numpy(), fn(x).numpy())
    np.testing.assert_array_equal(abs(-x).numpy(), x.numpy())


@FIXTURE_OK
@given(x=arrays_away_from(SMALL, kinks=(-1.0, 0.5), margin=1e-2))
def test_clamp_away_from_bounds(device, x):
    t = leaf(x, device)
    np.testing.assert_array_equal(mr.clamp(t, -1.0, 0.5).numpy(), np.clip(x, -1.0, 0.5))
    np.testing.assert_array_equal(t.clamp(min=-1.0).numpy(), np.maximum(x, -1.0))
    np.testing.assert_array_equal(t.clip(max=0.5).numpy(), np.minimum(x, 0.5))
    assert mr.gradcheck(lambda v: mr.clamp(v, -1.0, 0.5), [t])
    assert mr.gradcheck(lambda v: mr.clamp(v, min=-1.0), [t])
    assert mr.gradcheck(lambda v: mr.clamp(v, max=0.5), [t])


def test_clamp_with_tensor_bounds(device):
    x = leaf(np.array([-2.0, 0.0, 2.0]), device)
    lo = mr.tensor(np.array([-1.0, -1.0, -1.0]), device=device)
    hi = mr.tensor(np.array([1.0, 1.0, 1.0]), device=device)
    out = mr.clamp(x, lo, hi)
    np.testing.assert_array_equal(out.numpy(), [-1.0, 0.0, 1.0])
    out.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 1.0, 0.0])


def test_clamp_needs_a_bound(device):
    with pytest.raises(ValueError, match="clamp"):
        mr.clamp(mr.zeros(2, device=device), None, None)


@pytest.mark.parametrize("op, ref", [(mr.maximum, np.maximum), (mr.minimum, np.minimum)])
@FIXTURE_OK
@given(pair=untied_pair())
def test_maximum_minimum_without_ties(device, op, ref, pair):
    a, b = leaf(pair[0], device), leaf(pair[1], device)
    np.testing.assert_array_equal(op(a, b).numpy(), ref(pair[0], pair[1]))
    assert mr.gradcheck(op, [a, b])


@FIXTURE_OK
@given(pair=broadcast_pair(), cond_seed=st.integers(0, 2**16))
def test_where(device, pair, cond_seed):
    a, b = leaf(pair[0], device), leaf(pair[1], device)
    shape = np.broadcast_shapes(pair[0].shape, pair[1].shape)
    cond = np.random.default_rng(cond_seed).random(shape) < 0.5
    c = mr.tensor(cond, device=device)
    np.testing.assert_array_equal(mr.where(c, a, b).numpy(), np.where(cond, pair[0], pair[1]))
    assert mr.gradcheck(lambda x, y: mr.where(c, x, y), [a, b])


def test_where_gradient_goes_only_to_the_chosen_side(device):
    a = leaf(np.array([1.0, 2.0, 3.0]), device)
    b = leaf(np.array([10.0, 20.0, 30.0]), device)
    cond = mr.tensor([True, False, True], device=device)
    out = mr.where(cond, a, b)
    out.backward(mr.tensor(np.array([1.0, 2.0, 3.0]), device=device))
    np.testing.assert_array_equal(a.grad.numpy(), [1.0, 0.0, 3.0])
    np.testing.assert_array_equal(b.grad.numpy(), [0.0, 2.0, 0.0])


# ----- kink conventions (finite differences cannot see these; they are choices, pinned here) -----
def test_abs_gradient_at_zero_is_zero(device):
    x = leaf(np.array([-2.0, 0.0, 3.0]), device)
    mr.abs(x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [-1.0, 0.0, 1.0])


def test_clamp_gradient_passes_at_the_bounds(device):
    x = leaf(np.array([-1.0, 0.0, 1.0, 1.5, -3.0]), device)
    mr.clamp(x, -1.0, 1.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0, 1.0, 0.0, 0.0])


@pytest.mark.parametrize("op", [mr.maximum, mr.minimum])
def test_maximum_minimum_ties_split_the_gradient(device, op):
    a = leaf(np.array([1.0, 2.0, 5.0]), device)
    b = leaf(np.array([1.0, 3.0, 4.0]), device)
    op(a, b).sum().backward()
    is_max = op is mr.maximum
    np.testing.assert_array_equal(a.grad.numpy(), [0.5, 0.0, 1.0] if is_max else [0.5, 1.0, 0.0])
    np.testing.assert_array_equal(b.grad.numpy(), [0.5, 1.0, 0.0] if is_max else [0.5, 0.0, 1.0])


def test_maximum_tie_with_broadcast_scalar(device):
    a = leaf(np.array([0.0, 1.0, -1.0]), device)
    mr.maximum(a, 0.0).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [0.5, 1.0, 0.0])


# ----- scalars, numpy arrays, dtypes ---------------------------------------------------------------
def test_python_scalars_on_either_side(device):
    x = leaf(np.array([1.0, 2.0, 4.0]), device)
    cases = [
        (2 + x, [3, 4, 6]), (x + 2, [3, 4, 6]), (2 - x, [1, 0, -2]), (x - 2, [-1, 0, 2]),
        (3 * x, [3, 6, 12]), (x * 3, [3, 6, 12]), (4 / x, [4, 2, 1]), (x / 4, [0.25, 0.5, 1]),
        (x**2, [1, 4, 16]), (2**x, [2, 4, 16]),
    ]
    for out, expected in cases:
        assert isinstance(out, mr.Tensor)
        assert out.dtype == np.float64
        np.testing.assert_allclose(out.numpy(), expected)
    # d/dx of (2 - x) + (4 / x) = -1 - 4 / x^2
    ((2 - x) + (4 / x)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), -1 - 4 / np.array([1.0, 2.0, 4.0]) ** 2)


def test_numpy_arrays_on_either_side(device):
    if device != "cpu":
        pytest.skip("numpy arrays are host arrays; mixing them with a GPU tensor is a device error")
    x = leaf(np.array([1.0, 2.0, 4.0]), device)
    n = np.array([2.0, 3.0, 5.0])
    for out, expected in [(n + x, n + x.numpy()), (x - n, x.numpy() - n), (n - x, n - x.numpy()), (n * x, n * x.numpy()),
                          (n / x, n / x.numpy()), (x / n, x.numpy() / n), (np.float64(2.0) * x, 2 * x.numpy())]:
        assert isinstance(out, mr.Tensor)
        np.testing.assert_allclose(out.numpy(), expected)
    (n * x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), n)


def test_scalar_keeps_the_tensor_dtype(device):
    x = mr.tensor([1.0, 2.0], device=device)
    assert (x * 2.5).dtype == np.float32
    assert (2 + x).dtype == np.float32
    i = mr.tensor([1, 2], device=device)
    assert (i + 1).dtype == np.int64
    assert (i * 0.5).dtype.kind == "f"
    assert (i / 2).dtype.kind == "f"
    np.testing.assert_allclose((i / 2).numpy(), [0.5, 1.0])


def test_comparisons_return_tensors_without_grad(device):
    x = leaf(np.array([1.0, 2.0, 3.0]), device)
    y = mr.tensor(np.array([3.0, 2.0, 1.0]), device=device)
    xv, yv = x.numpy(), y.numpy()
    for out, expected in [(x < y, xv < yv), (x <= y, xv <= yv), (x > y, xv > yv), (x >= y, xv >= yv),
                          (x == y, xv == yv), (x != y, xv != yv), (x > 2, xv > 2), (2 < x, 2 < xv), (x == 2.0, xv == 2)]:
        assert isinstance(out, mr.Tensor)
        assert out.dtype == np.bool_
        assert not out.requires_grad and out.grad_fn is None
        np.testing.assert_array_equal(out.numpy(), expected)


def test_ops_under_no_grad_record_nothing(device):
    x = leaf(np.array([1.0, 2.0]), device)
    with mr.no_grad():
        y = (x * 2 + 1).exp()
    assert not y.requires_grad and y.grad_fn is None


def test_float32_gradients_stay_float32(device):
    x = mr.tensor([1.0, 2.0], device=device, requires_grad=True)
    (x * x + x.exp()).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad.numpy(), 2 * np.array([1.0, 2.0]) + np.exp([1.0, 2.0]), rtol=1e-6)


# ----- dtype promotion as PyTorch: a float operand's dtype wins, scalars never widen ------------------
def test_mixed_kind_operands_take_the_float_dtype(device):
    i = mr.tensor([1, 2, 4], device=device)
    b = mr.tensor([True, False, True], device=device)
    f = mr.tensor([0.5, 1.0, 2.0], device=device)
    iv, bv, fv = np.array([1, 2, 4]), np.array([True, False, True]), np.array([0.5, 1.0, 2.0])
    cases = [
        (i * 2.5, np.float32, iv * 2.5), (2.5 - i, np.float32, 2.5 - iv), (i / 2, np.float32, iv / 2),
        (i / i, np.float32, iv / iv), (f + i, np.float32, fv + iv), (i * f, np.float32, iv * fv),
        (f * np.float64(3.0), np.float32, fv * 3), (np.float64(3.0) - f, np.float32, 3 - fv),
        (i + np.int64(1), np.int64, iv + 1), (b + 1, np.int64, bv.astype(np.int64) + 1), (b * 2, np.int64, bv * 2),
        (b + 0.5, np.float32, bv + 0.5), (mr.where(b, i, 0.5), np.float32, np.where(bv, iv, 0.5)),
        (i.exp(), np.float32, np.exp(iv)), (i.log(), np.float32, np.log(iv)), (i.sqrt(), np.float32, np.sqrt(iv)),
    ]
    for out, dtype, expected in cases:
        assert out.dtype == dtype, (out.dtype, dtype, expected)
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)


def test_float32_graph_stays_float32_with_an_integer_tensor(device):
    x = mr.tensor([1.0, 2.0], device=device, requires_grad=True)
    k = mr.tensor([3, 4], device=device)
    y = x * k
    assert y.dtype == np.float32
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 4.0])


def test_comparison_with_none_is_false_as_pytorch(device):
    x = mr.tensor([1.0, 2.0], device=device)
    assert (x == None) is False  # noqa: E711 - the operator itself is under test
    assert (x != None) is True  # noqa: E711
    assert x not in [None]


def _central_difference(f, v, eps=1e-6):
    return (f(v + eps) - f(v - eps)) / (2 * eps)


def test_pow_gradient_where_the_textbook_formula_is_nan(device):
    # d/da a**0 at a = 0: b * a**(b - 1) is 0 * inf; the function is constant, so the slope is 0
    a = leaf(np.array([0.0, 2.0]), device)
    b = leaf(np.array([0.0, 0.0]), device)
    (a**b).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [_central_difference(lambda v: v**0.0, 0.0), 0.0])
    # d/db 0**b for b > 0 is 0 (a**b log a would be 0 * -inf); and d/db a**b = a**b log a elsewhere
    a = mr.tensor([0.0, 2.0], dtype=mr.float64, device=device)
    b = leaf(np.array([2.0, 3.0]), device)
    (a**b).sum().backward()
    expected = [_central_difference(lambda v: 0.0**v, 2.0), _central_difference(lambda v: 2.0**v, 3.0)]
    np.testing.assert_allclose(b.grad.numpy(), expected, rtol=1e-6, atol=1e-12)


def test_clamp_on_a_tensor_bound_gives_the_gradient_to_the_input(device):
    # the same convention as with number bounds (gradient passes where lo <= x <= hi), as PyTorch
    x = leaf(np.array([-1.0, 0.0, 1.0, 3.0]), device)
    lo = leaf(np.array([-1.0, -1.0, -1.0, -1.0]), device)
    hi = leaf(np.array([1.0, 1.0, 1.0, 1.0]), device)
    mr.clamp(x, lo, hi).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0, 1.0, 0.0])
    np.testing.assert_array_equal(lo.grad.numpy(), [0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(hi.grad.numpy(), [0.0, 0.0, 0.0, 1.0])
    y = leaf(np.array([-1.0, 0.0, 1.0, 3.0]), device)
    mr.clamp(y, -1.0, 1.0).sum().backward()
    np.testing.assert_array_equal(y.grad.numpy(), x.grad.numpy())
    np.testing.assert_array_equal(mr.clamp(x, lo, hi).numpy(), np.clip(x.numpy(), -1.0, 1.0))
