"""linear: x @ weight.T + bias against numpy, gradients across batch shapes, float32 agreement, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minires as mr
from minires.ops.linear import linear
from minires.testing import float_arrays


@st.composite
def linear_case(draw):
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    fin, fout = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    x = draw(float_arrays(batch + (fin,)))
    w = draw(float_arrays((fout, fin)))
    b = draw(st.none() | float_arrays((fout,)))
    return x, w, b


@given(linear_case())
def test_forward_matches_numpy(case) -> None:
    x, w, b = case
    expected = np.einsum("...i,oi->...o", x, w) + (0 if b is None else b)
    out = linear(mr.tensor(x), mr.tensor(w), None if b is None else mr.tensor(b))
    assert out.shape == x.shape[:-1] + (w.shape[0],)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)


@given(linear_case())
def test_gradcheck(case) -> None:
    x, w, b = case
    inputs = [mr.tensor(a, requires_grad=True) for a in (x, w) + (() if b is None else (b,))]
    assert mr.gradcheck(linear, inputs)


def test_only_weight_requires_grad(device) -> None:
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((5, 3)), rng.standard_normal((2, 3))
    W = mr.tensor(w, requires_grad=True, device=device)
    linear(mr.tensor(x, device=device), W).sum().backward()
    np.testing.assert_allclose(W.grad.numpy(), np.ones((5, 2)).T @ x, rtol=1e-12)


def test_float32_agrees_with_float64() -> None:
    rng = np.random.default_rng(1)
    x, w, b, g = (
        rng.standard_normal((8, 4, 32)),
        rng.standard_normal((10, 32)),
        rng.standard_normal(10),
        rng.standard_normal((8, 4, 10)),
    )
    out = {}
    for dt in (np.float32, np.float64):
        ts = [mr.tensor(a.astype(dt), requires_grad=True) for a in (x, w, b)]
        y = linear(*ts)
        y.backward(mr.tensor(g.astype(dt)))
        assert y.dtype == dt
        out[dt] = [y.numpy()] + [t.grad.numpy() for t in ts]
    for a, b64 in zip(out[np.float32], out[np.float64]):
        np.testing.assert_allclose(a, b64, rtol=1e-4, atol=1e-4 * np.abs(b64).max())  # stated float32 tolerance


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"linear: input has 3 features \(shape \(2, 3\)\), weight expects 4"):
        linear(mr.zeros(2, 3), mr.zeros(5, 4))
    with pytest.raises(ValueError, match=r"linear: weight must be 2-D"):
        linear(mr.zeros(2, 3), mr.zeros(3))
    with pytest.raises(ValueError, match=r"linear: bias has shape \(4,\), expected \(5,\)"):
        linear(mr.zeros(2, 3), mr.zeros(5, 3), mr.zeros(4))
    with pytest.raises(ValueError, match=r"linear: input must have at least 1 dim"):
        linear(mr.tensor(1.0), mr.zeros(5, 1))


def test_matches_torch_when_installed() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x, w, b, g = rng.standard_normal((3, 2, 6)), rng.standard_normal((4, 6)), rng.standard_normal(4), rng.standard_normal((3, 2, 4))
    ours = [mr.tensor(a, requires_grad=True) for a in (x, w, b)]
    theirs = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    y, ty = linear(*ours), torch.nn.functional.linear(*theirs)
    y.backward(mr.tensor(g))
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12)
    for o, t in zip(ours, theirs):
        np.testing.assert_allclose(o.grad.numpy(), t.grad.numpy(), rtol=1e-12)


def test_dtype_mismatch_is_refused() -> None:
    x = mr.tensor(np.ones((2, 3)), dtype=mr.float32)
    w64 = mr.tensor(np.ones((4, 3)), dtype=mr.float64)
    with pytest.raises(TypeError, match="linear: input dtype float32 and weight dtype float64 differ"):
        linear(x, w64)
    with pytest.raises(TypeError, match="linear: bias dtype float64 differs from input dtype float32"):
        linear(x, w64.float(), mr.zeros(4, dtype=mr.float64))
