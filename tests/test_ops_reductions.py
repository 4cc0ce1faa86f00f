"""Reductions: sum, mean, var, amax/amin, max/min with and without dim, argmax/argmin.
Forward against numpy, gradients against finite differences, tie conventions pinned exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minires as mr
from minires.testing import arrays_without_ties, float_arrays, shapes

FIXTURE_OK = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
)


def leaf(array: np.ndarray, device: str) -> mr.Tensor:
    return mr.tensor(array, device=device, requires_grad=True)


@st.composite
def shape_and_dims(draw, min_dims=1, max_dims=3):
    """A shape, and dims to reduce: None, one int (maybe negative) or a tuple of distinct dims."""
    shape = draw(shapes(min_dims=min_dims, max_dims=max_dims, max_side=4))
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        return shape, None
    if kind == "int":
        return shape, draw(st.integers(-len(shape), len(shape) - 1))
    dims = draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=len(shape), unique=True))
    return shape, tuple(dims)


def np_axis(dims):
    return dims if dims is None or isinstance(dims, int) else tuple(dims)


@pytest.mark.parametrize("name", ["sum", "mean"])
@FIXTURE_OK
@given(sd=shape_and_dims(), keepdim=st.booleans(), data=st.data())
def test_sum_mean(device, name, sd, keepdim, data):
    shape, dims = sd
    x = data.draw(float_arrays(shape))
    t = leaf(x, device)
    out = getattr(mr, name)(t, dims, keepdim)
    expected = getattr(np, name)(x, axis=np_axis(dims), keepdims=keepdim)
    assert out.shape == np.shape(expected)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert mr.gradcheck(lambda v: getattr(mr, name)(v, dims, keepdim), [t])
    # the method spelling and numpy's (axis, keepdims) spelling agree
    np.testing.assert_array_equal(getattr(t, name)(dim=dims, keepdim=keepdim).numpy(), out.numpy())
    np.testing.assert_array_equal(getattr(t, name)(axis=dims, keepdims=keepdim).numpy(), out.numpy())


@FIXTURE_OK
@given(sd=shape_and_dims(), keepdim=st.booleans(), unbiased=st.booleans(), data=st.data())
def test_var(device, sd, keepdim, unbiased, data):
    shape, dims = sd
    x = data.draw(float_arrays(shape))
    axes = range(len(shape)) if dims is None else ([dims] if isinstance(dims, int) else dims)
    n = int(np.prod([shape[d] for d in axes]))
    t = leaf(x, device)
    if n - int(unbiased) <= 0:  # PyTorch: a warning and nan (0 / 0)
        with pytest.warns(RuntimeWarning, match="var: degrees of freedom is <= 0"):
            out = t.var(dims, keepdim, unbiased=unbiased)
        assert np.all(np.isnan(out.numpy()))
        return
    out = t.var(dims, keepdim, unbiased=unbiased)
    expected = np.var(x, axis=np_axis(dims), keepdims=keepdim, ddof=int(unbiased))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert mr.gradcheck(lambda v: mr.var(v, dims, keepdim, unbiased), [t])


def test_var_is_unbiased_by_default(device):
    x = mr.tensor(np.array([1.0, 2.0, 3.0, 4.0]), device=device)
    assert x.var().item() == pytest.approx(np.var([1, 2, 3, 4], ddof=1))
    assert x.var(unbiased=False).item() == pytest.approx(1.25)


@pytest.mark.parametrize("name", ["amax", "amin"])
@FIXTURE_OK
@given(sd=shape_and_dims(), keepdim=st.booleans(), data=st.data())
def test_amax_amin_without_ties(device, name, sd, keepdim, data):
    shape, dims = sd
    x = data.draw(arrays_without_ties(shape))
    t = leaf(x, device)
    out = getattr(mr, name)(t, dims, keepdim)
    expected = getattr(np, name)(x, axis=np_axis(dims), keepdims=keepdim)
    assert out.shape == np.shape(expected)
    np.testing.assert_array_equal(out.numpy(), expected)
    assert mr.gradcheck(lambda v: getattr(mr, name)(v, dims, keepdim), [t])


@pytest.mark.parametrize("name", ["max", "min"])
@FIXTURE_OK
@given(shape=shapes(min_dims=1, max_dims=3, max_side=4), keepdim=st.booleans(), data=st.data())
def test_max_min_along_dim_without_ties(device, name, shape, keepdim, data):
    x = data.draw(arrays_without_ties(shape))
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    t = leaf(x, device)
    values, indices = getattr(t, name)(dim, keepdim)
    np.testing.assert_array_equal(values.numpy(), getattr(np, name)(x, axis=dim, keepdims=keepdim))
    arg = np.argmax if name == "max" else np.argmin
    np.testing.assert_array_equal(indices.numpy(), arg(x, axis=dim, keepdims=keepdim))
    assert indices.dtype.kind == "i" and not indices.requires_grad
    assert mr.gradcheck(lambda v: getattr(mr, name)(v, dim, keepdim).values, [t])


@pytest.mark.parametrize("name", ["max", "min"])
@FIXTURE_OK
@given(data=st.data())
def test_max_min_of_everything_without_ties(device, name, data):
    x = data.draw(arrays_without_ties(shapes(max_dims=3, max_side=4)))
    t = leaf(x, device)
    out = getattr(t, name)()
    assert out.shape == ()
    assert out.item() == getattr(np, name)(x)
    assert mr.gradcheck(lambda v: getattr(v, name)(), [t])


def test_argmax_argmin(device):
    x = mr.tensor(np.array([[1.0, 5.0, 5.0], [7.0, 0.0, 7.0]]), device=device, requires_grad=True)
    np.testing.assert_array_equal(mr.argmax(x, dim=1).numpy(), [1, 0])
    np.testing.assert_array_equal(x.argmin(dim=0).numpy(), [0, 1, 0])
    assert mr.argmax(x).item() == 3
    assert x.argmax(dim=1, keepdim=True).shape == (2, 1)
    assert not mr.argmax(x).requires_grad


# ----- tie conventions: amax splits evenly, max(dim) picks the first index -----------------------
def test_amax_ties_split_the_gradient_evenly(device):
    x = leaf(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]), device)
    mr.amax(x, dim=1).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])


def test_amin_ties_over_several_dims(device):
    x = leaf(np.array([[0.0, 1.0], [0.0, 0.0]]), device)
    mr.amin(x, dim=(0, 1)).backward()
    np.testing.assert_allclose(x.grad.numpy(), [[1 / 3, 0.0], [1 / 3, 1 / 3]])


def test_max_of_everything_ties_split_evenly(device):
    x = leaf(np.array([4.0, 1.0, 4.0, 4.0]), device)
    x.max().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1 / 3, 0.0, 1 / 3, 1 / 3])


@pytest.mark.parametrize("name, values", [("max", [1.0, 3.0, 3.0, 0.0]), ("min", [2.0, 0.0, 5.0, 0.0])])
def test_max_min_along_dim_pick_the_first_tied_index(device, name, values):
    x = leaf(np.array([values]), device)
    result = getattr(x, name)(dim=1)
    first = 1
    np.testing.assert_array_equal(result.indices.numpy(), [first])
    result.values.sum().backward()
    expected = np.zeros((1, 4))
    expected[0, first] = 1.0
    np.testing.assert_array_equal(x.grad.numpy(), expected)


def test_mean_of_integers_is_refused(device):
    with pytest.raises(TypeError, match="mean"):
        mr.tensor([1, 2, 3], device=device).mean()


def test_sum_of_integers_stays_integer(device):
    out = mr.tensor([[1, 2], [3, 4]], device=device).sum(dim=0)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out.numpy(), [4, 6])


def test_reduction_dim_errors_name_the_op(device):
    x = mr.zeros(2, 3, device=device)
    with pytest.raises(IndexError, match="sum: dim 2 is out of range"):
        x.sum(dim=2)
    with pytest.raises(ValueError, match="mean: .* repeats"):
        x.mean(dim=(1, -1))
    with pytest.raises(TypeError, match="max: dim must be an int"):
        x.max(dim=(0, 1))
    with pytest.raises(ValueError, match="amax: cannot reduce dim 0 of size 0"):
        mr.amax(mr.zeros(0, device=device))


# ----- a 0-d tensor accepts dim 0 / -1, as PyTorch -----------------------------------------------------
@pytest.mark.parametrize("dim", [0, -1])
def test_reductions_of_a_0d_tensor_along_dim_0(device, dim):
    for name in ("sum", "mean", "amax", "amin"):
        x = mr.tensor(np.array(2.5), device=device, requires_grad=True)
        out = getattr(x, name)(dim)
        assert out.shape == () and out.item() == 2.5
        out.backward()
        assert x.grad.shape == () and x.grad.item() == 1.0
    for name in ("max", "min"):
        x = mr.tensor(np.array(2.5), device=device, requires_grad=True)
        for keepdim in (False, True):
            values, indices = getattr(x, name)(dim=dim, keepdim=keepdim)
            assert values.shape == () and values.item() == 2.5
            assert indices.shape == () and indices.item() == 0
        x.max(dim=dim).values.backward()
        assert x.grad.item() == 1.0
    x = mr.tensor(np.array(2.5), device=device)
    assert x.argmax(dim).item() == 0 and x.argmin(dim).item() == 0
    assert x.softmax(dim).item() == 1.0


def test_reductions_of_a_0d_tensor_refuse_other_dims(device):
    x = mr.tensor(np.array(2.5), device=device)
    with pytest.raises(IndexError, match="max: dim 1 is out of range for a tensor with 0 dimensions"):
        x.max(dim=1)
    with pytest.raises(IndexError, match="sum: dim -2 is out of range"):
        x.sum(-2)


def test_argmax_argmin_dim_errors_name_the_op(device):
    x = mr.zeros(2, 3, device=device)
    with pytest.raises(IndexError, match="argmax: dim 2 is out of range for a tensor with 2 dimensions"):
        x.argmax(dim=2)
    with pytest.raises(IndexError, match="argmin: dim -3 is out of range"):
        x.argmin(dim=-3)
    np.testing.assert_array_equal(mr.tensor([[1.0, 5.0, 2.0]], device=device).argmax(dim=-1).numpy(), [1])
