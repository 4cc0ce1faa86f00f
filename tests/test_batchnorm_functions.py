"""The two BatchNorm Functions on their own: batch statistics (training) and fixed statistics (eval),
with the running-statistics update outside the differentiable core."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minires as mr
from minires.ops.normalization import BatchNormEvalFunction, BatchNormTrainFunction, batch_norm, update_running_stats
from minires.testing import float_arrays


def _t(a, grad=True):
    return mr.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


@settings(max_examples=15, deadline=None)
@given(
    st.tuples(st.integers(2, 4), st.integers(1, 3), st.integers(1, 3)).flatmap(
        lambda s: st.tuples(float_arrays(s), float_arrays((s[1],), 0.5, 2.0), float_arrays((s[1],)))
    )
)
def test_train_function_gradients_match_finite_differences(xwb) -> None:
    x, w, b = xwb
    x = x + np.arange(x.size).reshape(x.shape) * 0.37  # keep every channel's variance well above eps
    assert mr.gradcheck(lambda a, c, d: BatchNormTrainFunction.apply(a, c, d, 1e-5)[0], [_t(x), _t(w), _t(b)])


@settings(max_examples=15, deadline=None)
@given(
    st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)).flatmap(
        lambda s: st.tuples(
            float_arrays(s), float_arrays((s[1],)), float_arrays((s[1],), 0.1, 2.0), float_arrays((s[1],)), float_arrays((s[1],))
        )
    )
)
def test_eval_function_gradients_match_finite_differences(args) -> None:
    x, mean, var, w, b = args
    fn = lambda a, c, d: BatchNormEvalFunction.apply(a, mr.tensor(mean), mr.tensor(var), c, d, 1e-5)  # noqa: E731
    assert mr.gradcheck(fn, [_t(x), _t(w), _t(b)])
    # and its value is the formula, computed here directly
    y = fn(_t(x), _t(w), _t(b)).numpy()
    c = (1, -1, 1)
    np.testing.assert_allclose(y, (x - mean.reshape(c)) / np.sqrt(var.reshape(c) + 1e-5) * w.reshape(c) + b.reshape(c), rtol=1e-12)


def test_train_function_returns_batch_statistics_without_gradient_and_touches_nothing() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 4)) * 2 + 1
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    before = (x.copy(), w.copy(), b.copy())
    y, mean, var = BatchNormTrainFunction.apply(_t(x), _t(w), _t(b), 1e-5)
    np.testing.assert_allclose(mean.numpy(), x.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(var.numpy(), x.var(axis=(0, 2)), rtol=1e-12)  # biased
    assert y.requires_grad and not mean.requires_grad and not var.requires_grad
    for a, a0 in zip((x, w, b), before):
        np.testing.assert_array_equal(a, a0)


def test_running_statistics_update_once_per_forward_and_never_in_backward() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 2, 3, 3))
    rm, rv = mr.tensor(np.array([0.5, -1.0])), mr.tensor(np.array([2.0, 0.5]))
    xt = mr.tensor(x, requires_grad=True)
    y = batch_norm(xt, rm, rv, training=True, momentum=0.25)
    m = 6 * 9
    expected_mean = 0.75 * np.array([0.5, -1.0]) + 0.25 * x.mean(axis=(0, 2, 3))
    expected_var = 0.75 * np.array([2.0, 0.5]) + 0.25 * x.var(axis=(0, 2, 3)) * m / (m - 1)
    np.testing.assert_allclose(rm.numpy(), expected_mean, rtol=1e-12)
    np.testing.assert_allclose(rv.numpy(), expected_var, rtol=1e-12)
    (y * y).sum().backward()
    np.testing.assert_allclose(rm.numpy(), expected_mean, rtol=1e-12)  # backward leaves them alone
    np.testing.assert_allclose(rv.numpy(), expected_var, rtol=1e-12)


def test_update_running_stats_on_raw_arrays() -> None:
    rm, rv = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    update_running_stats(rm, rv, np.array([0.0, 1.0]), np.array([1.0, 2.0]), 5, 0.5)
    np.testing.assert_allclose(rm, [0.5, 1.5])
    np.testing.assert_allclose(rv, [1.5 + 0.5 * 1.25, 2.0 + 0.5 * 2.5])


def test_functions_check_their_own_arguments() -> None:
    x = mr.zeros((4, 3, 2))
    with pytest.raises(ValueError, match=r"batch_norm: weight has shape \(2,\), expected \(3,\)"):
        BatchNormTrainFunction.apply(x, mr.ones(2), None, 1e-5)
    with pytest.raises(ValueError, match=r"batch_norm: expected more than 1 value per channel when training"):
        BatchNormTrainFunction.apply(mr.zeros((1, 3)), None, None, 1e-5)
    with pytest.raises(ValueError, match=r"batch_norm: running_var has shape \(4,\), expected \(3,\)"):
        BatchNormEvalFunction.apply(x, mr.zeros(3), mr.ones(4), None, None, 1e-5)
    with pytest.raises(TypeError, match=r"batch_norm: expected a floating-point tensor"):
        BatchNormEvalFunction.apply(x.long(), mr.zeros(3), mr.ones(3), None, None, 1e-5)
    with pytest.raises(ValueError, match=r"batch_norm: running_mean has shape \(2,\), expected \(3,\)"):
        batch_norm(x, mr.zeros(2), mr.ones(2), training=True)
