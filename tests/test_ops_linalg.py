"""matmul with numpy's rules: 2-D, batched with broadcast batch dims, 1-D on either side."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minires as mr
from minires.testing import broadcastable_shapes, float_arrays

FIXTURE_OK = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
)


def leaf(array: np.ndarray, device: str) -> mr.Tensor:
    return mr.tensor(array, device=device, requires_grad=True)


@st.composite
def matmul_shapes(draw):
    """Shapes (a, b) valid for a @ b: each operand 1-D, 2-D or batched, batch dims broadcastable."""
    n, k, m = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    batch_a, batch_b = draw(broadcastable_shapes(2, max_dims=2, max_side=3))
    a_kind, b_kind = draw(st.sampled_from(["vector", "matrix"])), draw(st.sampled_from(["vector", "matrix"]))
    a = (k,) if a_kind == "vector" else batch_a + (n, k)
    b = (k,) if b_kind == "vector" else batch_b + (k, m)
    return a, b


@FIXTURE_OK
@given(sh=matmul_shapes(), data=st.data())
def test_matmul(device, sh, data):
    x, y = data.draw(float_arrays(sh[0])), data.draw(float_arrays(sh[1]))
    a, b = leaf(x, device), leaf(y, device)
    out = a @ b
    expected = np.matmul(x, y)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert mr.gradcheck(mr.matmul, [a, b])


@pytest.mark.parametrize(
    "sa, sb",
    [((3,), (3,)), ((3,), (3, 2)), ((2, 3), (3,)), ((4, 2, 3), (3,)), ((3,), (4, 3, 2)), ((2, 1, 2, 3), (5, 3, 2))],
)
def test_matmul_vector_and_batch_cases(device, sa, sb):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(sa), rng.standard_normal(sb)
    a, b = leaf(x, device), leaf(y, device)
    np.testing.assert_allclose((a @ b).numpy(), x @ y, rtol=1e-12, atol=1e-12)
    assert mr.gradcheck(lambda u, v: u @ v, [a, b])


def test_matmul_exact_gradient(device):
    # d sum(A @ B) / dA = ones @ B^T, d / dB = A^T @ ones
    A = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    B = np.array([[1.0, -1.0, 0.5, 2.0], [0.0, 2.0, 1.0, -3.0]])
    a, b = leaf(A, device), leaf(B, device)
    (a @ b).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), np.ones((3, 4)) @ B.T)
    np.testing.assert_allclose(b.grad.numpy(), A.T @ np.ones((3, 4)))


def test_matmul_with_numpy_on_either_side(device):
    if device != "cpu":
        pytest.skip("numpy arrays are host arrays")
    W = np.array([[1.0, 2.0], [3.0, 4.0]])
    x = leaf(np.array([[1.0, 0.0], [0.0, 1.0]]), device)
    np.testing.assert_array_equal((W @ x).numpy(), W)
    np.testing.assert_array_equal((x @ W).numpy(), W)
    (W @ x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), W.T @ np.ones((2, 2)))


def test_matmul_one_side_without_grad(device):
    a = leaf(np.array([[1.0, 2.0]]), device)
    b = mr.tensor(np.array([[3.0], [4.0]]), device=device)
    (a @ b).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [[3.0, 4.0]])
    assert b.grad is None
