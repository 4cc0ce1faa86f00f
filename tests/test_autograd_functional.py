"""mr.autograd.functional: exact jvp / vjp / hvp / hessian, checked against closed forms,
finite differences and (when installed) torch.autograd.functional."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings

import minires as mr
import minires.nn.functional as F
from minires.autograd import functional as AF
from minires.testing import float_arrays

RNG = np.random.default_rng(0)


def t64(a: Any, grad: bool = False) -> mr.Tensor:
    return mr.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def f_two(x: mr.Tensor, w: mr.Tensor) -> mr.Tensor:
    return ((w @ x).tanh() ** 2).sum() + (x * x * x).sum()


def closed_form_hessian(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """d^2/dx^2 of sum tanh(Wx)^2 + sum x^3: W^T diag(s'') W + diag(6x), s(u) = tanh(u)^2."""
    t = np.tanh(w @ x)
    s2 = 2 * (1 - t**2) ** 2 - 4 * t**2 * (1 - t**2)
    return w.T @ np.diag(s2) @ w + np.diag(6 * x)


@settings(max_examples=10)
@given(x=float_arrays((3,)), w=float_arrays((2, 3)), v=float_arrays((3,)))
def test_hvp_and_hessian_match_the_closed_form(x: np.ndarray, w: np.ndarray, v: np.ndarray) -> None:
    h = closed_form_hessian(x, w)
    value, hv = AF.hvp(lambda a: f_two(a, t64(w)), t64(x), t64(v))
    np.testing.assert_allclose(value.item(), f_two(t64(x), t64(w)).item())
    np.testing.assert_allclose(hv.numpy(), h @ v, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(AF.hessian(lambda a: f_two(a, t64(w)), t64(x)).numpy(), h, rtol=1e-10, atol=1e-12)
    _, vh = AF.vhp(lambda a: f_two(a, t64(w)), t64(x), t64(v))
    np.testing.assert_allclose(vh.numpy(), v @ h, rtol=1e-10, atol=1e-12)


@settings(max_examples=10)
@given(x=float_arrays((3,)), w=float_arrays((2, 3)), u=float_arrays((3,)), du=float_arrays((2, 3)))
def test_jvp_matches_central_differences_and_vjp_is_its_transpose(x: np.ndarray, w: np.ndarray, u: np.ndarray, du: np.ndarray) -> None:
    def g(a: mr.Tensor, b: mr.Tensor) -> mr.Tensor:
        return (b @ a).tanh() * a[:2]

    out, ju = AF.jvp(g, (t64(x), t64(w)), (t64(u), t64(du)))
    eps = 1e-6
    plus = g(t64(x + eps * u), t64(w + eps * du)).numpy()
    minus = g(t64(x - eps * u), t64(w - eps * du)).numpy()
    np.testing.assert_allclose(ju.numpy(), (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(out.numpy(), g(t64(x), t64(w)).numpy())
    cot = RNG.standard_normal(2)
    _, (vx, vw) = AF.vjp(g, (t64(x), t64(w)), t64(cot))
    np.testing.assert_allclose(float(vx.numpy() @ u + (vw.numpy() * du).sum()), float(ju.numpy() @ cot), rtol=1e-10)


def test_results_are_detached_unless_create_graph() -> None:
    x = t64([0.5, 1.0], grad=True)
    _, hv = AF.hvp(lambda a: (a**4).sum(), x, t64([1.0, 0.0]))
    assert not hv.requires_grad
    _, hv = AF.hvp(lambda a: (a**4).sum(), x, t64([1.0, 0.0]), create_graph=True)
    assert hv.requires_grad
    (d,) = mr.autograd.grad(hv.sum(), x)  # d/dx of 12 x0^2 = 24 x0
    np.testing.assert_allclose(d.numpy(), [24 * 0.5, 0.0])


def test_hessian_of_several_inputs_and_unused_ones() -> None:
    x, y, z = t64([0.5, 1.0]), t64([2.0]), t64([3.0])
    h = AF.hessian(lambda a, b, c: (a * a * b).sum(), (x, y, z))
    np.testing.assert_allclose(h[0][0].numpy(), 2 * 2.0 * np.eye(2))
    np.testing.assert_allclose(h[0][1].numpy(), (2 * x.numpy()).reshape(2, 1))
    np.testing.assert_allclose(h[1][0].numpy(), (2 * x.numpy()).reshape(1, 2))
    assert h[2][2].shape == (1, 1) and not h[2][2].numpy().any()  # z is unused: zeros, as PyTorch


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="hvp: func must return a single one-element Tensor"):
        AF.hvp(lambda a: a * 2, t64([1.0, 2.0]), t64([1.0, 1.0]))
    with pytest.raises(ValueError, match=r"jvp: v\[0\] has shape \(3,\), expected \(2,\)"):
        AF.jvp(lambda a: a * 2, t64([1.0, 2.0]), t64([1.0, 1.0, 1.0]))
    with pytest.raises(TypeError, match="vjp: inputs must be a Tensor"):
        AF.vjp(lambda a: a, [1.0])


def test_matches_torch_functional() -> None:
    torch = pytest.importorskip("torch")
    x, w, v = RNG.standard_normal(4), RNG.standard_normal((3, 4)), RNG.standard_normal(4)
    _, hv = AF.hvp(lambda a: f_two(a, t64(w)), t64(x), t64(v))
    tw = torch.tensor(w)
    _, thv = torch.autograd.functional.hvp(
        lambda a: ((tw @ a).tanh() ** 2).sum() + (a**3).sum(), torch.tensor(x), torch.tensor(v)
    )
    np.testing.assert_allclose(hv.numpy(), thv.numpy(), rtol=1e-12)


def test_hvp_through_conv_batchnorm_pool_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    tF = torch.nn.functional
    rng = np.random.default_rng(3)
    x0, w0, w1 = rng.standard_normal((2, 2, 6, 6)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal((4, 3, 2, 2))
    g0, b0, v0 = rng.random(3) + 0.5, rng.standard_normal(3), rng.standard_normal((3, 2, 3, 3))
    target = np.array([1, 3])

    def net(f: Any, x: Any, w: Any, wb: Any, gamma: Any, beta: Any, tgt: Any) -> Any:
        h = f.conv2d(x, w, padding=1, stride=1)
        h = f.batch_norm(h, None, None, gamma, beta, training=True)
        h = f.max_pool2d(f.relu(h), 2)
        h = f.conv2d(h, wb, stride=1, dilation=1, groups=1)
        h = f.adaptive_avg_pool2d(h, 1).flatten(1)
        return f.cross_entropy(h, tgt, label_smoothing=0.1)

    m = [mr.tensor(a) for a in (x0, w1, g0, b0)]
    _, hv = AF.hvp(lambda w: net(F, m[0], w, m[1], m[2], m[3], mr.tensor(target)), t64(w0), t64(v0))
    tm = [torch.tensor(a) for a in (x0, w1, g0, b0)]
    _, thv = torch.autograd.functional.hvp(
        lambda w: net(tF, tm[0], w, tm[1], tm[2], tm[3], torch.tensor(target)), torch.tensor(w0), torch.tensor(v0)
    )
    np.testing.assert_allclose(hv.numpy(), thv.numpy(), rtol=1e-9, atol=1e-12)
