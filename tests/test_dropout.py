"""dropout: identity cases, scaling, statistics of the mask, reproducibility under manual_seed, gradient."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minires as mr
from minires.ops.dropout import dropout
from minires.testing import float_arrays, shapes


def test_identity_when_not_training_or_p_zero(device) -> None:
    x = mr.randn(4, 5, device=device)
    assert dropout(x, p=0.7, training=False) is x
    assert dropout(x, p=0.0, training=True) is x


def test_p_one_gives_zeros_and_zero_gradient(device) -> None:
    x = mr.randn(3, 4, device=device, requires_grad=True)
    y = dropout(x, p=1.0)
    np.testing.assert_array_equal(y.numpy(), 0.0)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), 0.0)


@pytest.mark.parametrize("p", [-0.1, 1.01, float("nan")])
def test_p_outside_unit_interval_raises(p) -> None:
    with pytest.raises(ValueError, match="dropout: probability p must be between 0 and 1"):
        dropout(mr.ones(3), p=p)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_statistics_zeroed_fraction_and_mean(p, device) -> None:
    n = 200_000
    y = dropout(mr.ones(n, device=device), p=p).numpy()
    kept = y != 0
    # survivors are scaled exactly by 1 / (1 - p)
    np.testing.assert_allclose(y[kept], np.float32(1 / (1 - p)), rtol=1e-6)
    # the zeroed fraction is Binomial(n, p) / n: 6 standard deviations is a bound a broken mask fails
    sd_fraction = np.sqrt(p * (1 - p) / n)
    assert abs((1 - kept.mean()) - p) < 6 * sd_fraction
    # the mean is preserved: each output is 0 or 1/(1-p), variance p / (1 - p)
    sd_mean = np.sqrt(p / (1 - p) / n)
    assert abs(y.mean() - 1.0) < 6 * sd_mean


def test_mask_reproducible_with_seed_and_differs_across_calls() -> None:
    x = mr.ones(1000)
    mr.manual_seed(123)
    a = dropout(x, p=0.5).numpy()
    b = dropout(x, p=0.5).numpy()
    mr.manual_seed(123)
    a2 = dropout(x, p=0.5).numpy()
    np.testing.assert_array_equal(a, a2)
    assert (a != b).any()  # successive calls draw fresh masks


def test_backward_uses_the_forward_mask() -> None:
    x = mr.tensor(np.random.default_rng(0).uniform(1, 2, (50, 20)), requires_grad=True)
    y = dropout(x, p=0.3)
    g = np.random.default_rng(1).standard_normal(y.shape)
    y.backward(mr.tensor(g))
    scaled_mask = y.numpy() / x.numpy()  # 0 or 1 / 0.7 where x is never 0
    np.testing.assert_allclose(x.grad.numpy(), g * scaled_mask, rtol=1e-12)


@given(float_arrays(shapes(min_dims=1, max_dims=3)), st.sampled_from([0.2, 0.5, 0.9]))
def test_gradcheck_with_fixed_seed(x, p) -> None:
    def fn(t):
        mr.manual_seed(7)  # the same mask on every forward the checker makes
        return dropout(t, p=p)

    assert mr.gradcheck(fn, [mr.tensor(x, requires_grad=True)])


def test_keeps_dtype_and_device(device) -> None:
    for dt in (mr.float32, mr.float64):
        y = dropout(mr.ones(8, 8, dtype=dt, device=device), p=0.5)
        assert y.dtype == dt and y.device == device
    with pytest.raises(TypeError, match="dropout: expected a floating-point tensor"):
        dropout(mr.tensor(np.arange(4)), p=0.5)
