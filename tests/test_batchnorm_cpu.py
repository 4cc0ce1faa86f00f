"""The channels-last CPU BatchNorm kernels against the generic (reference) kernels and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minires as mr
from minires.ops import batchnorm_cpu
from minires.ops.normalization import batch_norm, batch_norm_backward_train, batch_norm_forward_train


def _channels_last(a: np.ndarray) -> np.ndarray:
    """The same values as a (N, C, H, W), in NHWC memory."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@st.composite
def bn_inputs(draw: st.DrawFn) -> tuple:
    n, c, h, w = draw(st.integers(1, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    if n * h * w < 2:
        n = 2
    seed = draw(st.integers(0, 2**16))
    offset = draw(st.sampled_from([0.0, 3.0, -50.0]))  # a mean far from 0 must not cancel the variance
    return n, c, h, w, seed, offset


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("affine", [True, False])
@settings(max_examples=40, deadline=None)
@given(case=bn_inputs())
def test_channels_last_kernels_match_the_reference(dtype, tol, affine, case):
    n, c, h, w, seed, offset = case
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c, h, w)) * 2 + offset).astype(dtype)
    g = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal(c).astype(dtype) if affine else None
    bias = rng.standard_normal(c).astype(dtype) if affine else None
    x_cl, g_cl = _channels_last(x).reshape(n, c, -1), _channels_last(g).reshape(n, c, -1)
    assert batchnorm_cpu.channels_last_matrix(x_cl) is not None  # the fast path runs
    assert batchnorm_cpu.channels_last_matrix(x.reshape(n, c, -1)) is None or h * w == 1 or c == 1  # the reference runs
    fast = batch_norm_forward_train(x_cl, weight, bias, 1e-5)
    ref = batch_norm_forward_train(x.reshape(n, c, -1), weight, bias, 1e-5)
    for got, expected in zip(fast, ref):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * max(1.0, abs(offset)))
    assert batchnorm_cpu.channels_last_matrix(fast[0]) is not None  # the output keeps the channels-last memory
    mean, invstd = ref[1], ref[3]
    fast_grads = batch_norm_backward_train(g_cl, x_cl, mean, invstd, weight, True)
    ref_grads = batch_norm_backward_train(g.reshape(n, c, -1), x.reshape(n, c, -1), mean, invstd, weight, True)
    scale = max(1.0, float(np.abs(ref_grads[1]).max()))
    for got, expected in zip(fast_grads, ref_grads):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, expected, rtol=tol * 10, atol=tol * 10 * scale)
    no_dx = batch_norm_backward_train(g_cl, x_cl, mean, invstd, weight, False)
    assert no_dx[0] is None
    np.testing.assert_allclose(no_dx[1], fast_grads[1], rtol=1e-12, atol=0)


@settings(max_examples=15, deadline=None)
@given(case=bn_inputs())
def test_gradcheck_on_channels_last_input(case):
    n, c, h, w, seed, offset = case
    rng = np.random.default_rng(seed)
    x = mr.tensor(_channels_last(rng.standard_normal((n, c, h, w)) + offset), requires_grad=True)
    weight = mr.tensor(rng.standard_normal(c), requires_grad=True)
    bias = mr.tensor(rng.standard_normal(c), requires_grad=True)
    assert mr.gradcheck(lambda a, k, b: batch_norm(a, None, None, k, b, training=True), [x, weight, bias])
