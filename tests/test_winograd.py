"""Winograd F(2x2, 3x3) convolution against the im2col reference; the algorithm switch and its rule."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minires as mr
from minires import backends
from minires.backend import to_numpy
from minires.ops import winograd
from minires.ops.conv import Conv2d, conv2d

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)


@st.composite
def winograd_cases(draw: st.DrawFn, max_size: int = 9, max_channels: int = 5) -> tuple:
    """(N, C, O, H, W, pads) for a 3x3 stride-1 conv Winograd computes: asymmetric pads 0..2, odd/even outputs."""
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    h = draw(st.integers(max(1, 3 - pads[0] - pads[1]), max_size))
    w = draw(st.integers(max(1, 3 - pads[2] - pads[3]), max_size))
    return (draw(st.integers(1, 3)), draw(st.integers(1, max_channels)), draw(st.integers(1, max_channels)), h, w, pads)


def _conv_with(algorithm: str, x, w, b, pads, device, g):
    """Forward and all three gradients of Conv2d with ``algorithm`` forced (raw numpy results)."""
    xt, wt = mr.tensor(x, device=device, requires_grad=True), mr.tensor(w, device=device, requires_grad=True)
    bt = mr.tensor(b, device=device, requires_grad=True)
    with backends.use_conv_algorithm(algorithm):
        y = Conv2d.apply(xt, wt, bt, (1, 1), pads, (1, 1), 1)
        y.backward(mr.tensor(g, device=device))
    return [to_numpy(a) for a in (y.data, xt.grad.data, wt.grad.data, bt.grad.data)]


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
@settings(FIXTURE_OK, max_examples=40)
@given(case=winograd_cases(), seed=st.integers(0, 2**16))
def test_winograd_agrees_with_im2col(device, dtype, tol, case, seed):
    n, c, o, h, w, pads = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    k = rng.standard_normal((o, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    oh, ow = h + pads[0] + pads[1] - 2, w + pads[2] + pads[3] - 2
    g = rng.standard_normal((n, o, oh, ow)).astype(dtype)
    wino = _conv_with("winograd", x, k, b, pads, device, g)
    ref = _conv_with("im2col", x, k, b, pads, device, g)
    for what, got, expected in zip(("output", "input grad", "weight grad", "bias grad"), wino, ref):
        assert got.dtype == dtype, what
        assert got.shape == expected.shape, what
        assert _rel_err(got, expected) <= tol, f"{what}: relative error {_rel_err(got, expected):.2e} > {tol}"


@settings(FIXTURE_OK, max_examples=15)
@given(case=winograd_cases(max_size=5, max_channels=3), seed=st.integers(0, 2**16))
def test_winograd_gradcheck(device, case, seed):
    n, c, o, h, w, pads = case
    rng = np.random.default_rng(seed)
    inputs = [
        mr.tensor(a, device=device, requires_grad=True) for a in (rng.standard_normal((n, c, h, w)), rng.standard_normal((o, c, 3, 3)))
    ]
    with backends.use_conv_algorithm("winograd"):
        assert mr.gradcheck(lambda a, k: Conv2d.apply(a, k, None, (1, 1), pads, (1, 1), 1), inputs)


@settings(max_examples=20, deadline=None)
@given(c=st.integers(1, 4), o=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_weight_transform_adjoint_is_its_transpose(c, o, seed):
    """<U(g), dU> == <g, U^T(dU)>: the weight gradient passes through the exact adjoint of G g G^T."""
    rng = np.random.default_rng(seed)
    g, du = rng.standard_normal((o, c, 3, 3)), rng.standard_normal((16, c, o))
    lhs = np.vdot(winograd.weight_transform(g), du)
    rhs = np.vdot(g, winograd.weight_transform_adjoint(du))
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_weight_transform_matches_the_matrices():
    """U = G g G^T with Lavin & Gray's G, written out as a matrix product."""
    G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    g = np.random.default_rng(0).standard_normal((2, 3, 3, 3))
    expected = np.einsum("ai,ocij,bj->abco", G, g, G).reshape(16, 3, 2)
    np.testing.assert_allclose(winograd.weight_transform(g), expected, rtol=1e-14, atol=1e-14)


def test_auto_rule_picks_winograd_only_where_it_applies():
    choose = backends.choose_conv_algorithm
    f32 = np.dtype(np.float32)
    s1 = ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    assert choose(np, f32, *s1) == "winograd"
    assert choose(np, np.dtype(np.float64), *s1) == "winograd"
    assert choose(np, np.dtype(np.float16), *s1) == "im2col"
    assert choose(np, f32, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1) == "im2col"  # stride 2
    assert choose(np, f32, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1) == "im2col"  # 1x1
    assert choose(np, f32, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1) == "im2col"  # dilated
    assert choose(np, f32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2) == "im2col"  # grouped
    assert choose(np, f32, (3, 3), (1, 1), (3, 3, 3, 3), (1, 1), 1) == "im2col"  # padding 3
    assert choose(object(), f32, *s1) == "im2col"  # not numpy (cupy): its kernels stay


def test_forcing_either_algorithm(monkeypatch):
    calls = []
    real = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda *a: calls.append(1) or real(*a))
    x, w = mr.randn(2, 3, 6, 6), mr.randn(4, 3, 3, 3)
    with backends.use_conv_algorithm("im2col"):
        reference = conv2d(x, w, padding=1).numpy()
    assert calls == []
    with backends.use_conv_algorithm("winograd"):
        np.testing.assert_allclose(conv2d(x, w, padding=1).numpy(), reference, rtol=1e-4, atol=1e-5)
        assert calls == [1]
        conv2d(x, w, stride=2, padding=1)  # a shape Winograd cannot do: im2col, no error
        assert calls == [1]
    assert backends.conv_algorithm == "auto"  # restored


def test_bad_algorithm_name_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="conv_algorithm.*auto, im2col, winograd.*'fast'"):
        with backends.use_conv_algorithm("fast"):
            pass
    monkeypatch.setattr(backends, "conv_algorithm", "fast")
    with pytest.raises(ValueError, match="'fast'"):
        conv2d(mr.randn(1, 1, 4, 4), mr.randn(1, 1, 3, 3))


def test_environment_variable_sets_the_default():
    env = dict(os.environ, MINIRES_CONV_ALGO="im2col")
    code = "import minires; print(minires.backends.conv_algorithm); print(minires.backends.describe_conv_algorithm())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "im2col"
    assert "MINIRES_CONV_ALGO" in out[1]
