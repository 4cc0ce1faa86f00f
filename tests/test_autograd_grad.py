"""mr.autograd.grad and backward(create_graph=True): PyTorch's semantics, with torch as the oracle."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import minires as mr
from minires.testing import check_grads

pytestmark = pytest.mark.filterwarnings("ignore:Using backward:UserWarning")


@pytest.fixture
def torch() -> Any:
    return pytest.importorskip("torch")


def leaf(values: list[float]) -> mr.Tensor:
    return mr.tensor(values, dtype=mr.float64, requires_grad=True)


def twin(torch: Any, values: list[float]) -> Any:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def test_grad_returns_gradients_and_leaves_dot_grad_alone() -> None:
    x = leaf([0.5, -1.0, 2.0])
    y = (x * x * x).sum()
    (g,) = mr.autograd.grad(y, x)
    np.testing.assert_allclose(g.numpy(), 3 * x.numpy() ** 2)
    assert x.grad is None and g.grad_fn is None and not g.requires_grad


def test_gradient_of_gradient_matches_torch(torch: Any) -> None:
    x, tx = leaf([0.5, -1.0, 2.0]), twin(torch, [0.5, -1.0, 2.0])
    w, tw = leaf([1.5, 0.3, -0.7]), twin(torch, [1.5, 0.3, -0.7])
    (g,) = mr.autograd.grad((x.tanh() * w).sum() * x.sum(), x, create_graph=True)
    (tg,) = torch.autograd.grad((tx.tanh() * tw).sum() * tx.sum(), tx, create_graph=True)
    np.testing.assert_allclose(g.detach().numpy(), tg.detach().numpy(), rtol=1e-12)
    assert g.requires_grad and g.grad_fn is not None
    hx, hw = mr.autograd.grad((g * g).sum(), [x, w])
    thx, thw = torch.autograd.grad((tg * tg).sum(), [tx, tw])
    np.testing.assert_allclose(hx.numpy(), thx.numpy(), rtol=1e-12)
    np.testing.assert_allclose(hw.numpy(), thw.numpy(), rtol=1e-12)


def test_third_order_matches_closed_form() -> None:
    x = leaf([0.3, 1.1])
    t = np.tanh(x.numpy())
    derivatives = [1 - t**2, -2 * t * (1 - t**2), (1 - t**2) * (6 * t**2 - 2)]  # of tanh: 1st, 2nd, 3rd
    g = x.tanh()
    for want in derivatives:
        (g,) = mr.autograd.grad(g.sum(), x, create_graph=True)
        np.testing.assert_allclose(g.detach().numpy(), want, rtol=1e-12)


def test_backward_create_graph_accumulates_as_torch(torch: Any) -> None:
    x, tx = leaf([0.5, 2.0]), twin(torch, [0.5, 2.0])
    for a in (x, tx):
        (a * a * a).sum().backward(create_graph=True)  # grad = 3 a^2, with a graph
        first = a.grad
        assert first.requires_grad
        first.sum().backward()  # accumulates d(sum 3 a^2)/da = 6 a into the same .grad, out of place
    np.testing.assert_allclose(x.grad.detach().numpy(), tx.grad.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(x.grad.detach().numpy(), 3 * np.array([0.5, 2.0]) ** 2 + 6 * np.array([0.5, 2.0]))


def test_grad_with_respect_to_an_intermediate_and_grad_outputs(torch: Any) -> None:
    x, tx = leaf([0.5, -1.0, 2.0]), twin(torch, [0.5, -1.0, 2.0])
    h, th = x * 2, tx * 2
    y, ty = h.exp() * x, th.exp() * tx
    v = [1.0, -2.0, 0.5]
    gh, gx = mr.autograd.grad(y, [h, x], grad_outputs=mr.tensor(v, dtype=mr.float64))
    tgh, tgx = torch.autograd.grad(ty, [th, tx], grad_outputs=torch.tensor(v, dtype=torch.float64))
    np.testing.assert_allclose(gh.numpy(), tgh.numpy(), rtol=1e-12)
    np.testing.assert_allclose(gx.numpy(), tgx.numpy(), rtol=1e-12)


def test_several_outputs_sum_their_products() -> None:
    x = leaf([0.5, -1.0])
    (g,) = mr.autograd.grad([(x * x).sum(), x.exp().sum()], x)
    np.testing.assert_allclose(g.numpy(), 2 * x.numpy() + np.exp(x.numpy()))


def test_unused_inputs_and_errors() -> None:
    x, z = leaf([0.5]), leaf([1.0])
    y = x * 3
    with pytest.raises(RuntimeError, match="input 1 .* was not used"):
        mr.autograd.grad(y, [x, z], retain_graph=True)
    gx, gz = mr.autograd.grad(y, [x, z], allow_unused=True)
    assert gz is None and gx.item() == 3
    with pytest.raises(RuntimeError, match="second time"):
        mr.autograd.grad(y, x)  # freed by the call above (retain_graph defaults to create_graph=False)
    with pytest.raises(RuntimeError, match="input 0 .* does not require grad"):
        mr.autograd.grad((x * 2).sum(), mr.tensor([1.0]))
    with pytest.raises(RuntimeError, match="only for scalar outputs"):
        mr.autograd.grad(mr.tensor([1.0, 2.0], requires_grad=True) * 2, x, allow_unused=True)


def test_create_graph_retains_the_graph_by_default() -> None:
    x = leaf([0.5, 1.5])
    y = (x**3).sum()
    (g,) = mr.autograd.grad(y, x, create_graph=True)
    (g2,) = mr.autograd.grad(y, x)  # the first call kept the graph
    np.testing.assert_allclose(g.detach().numpy(), g2.numpy())


def test_hooks_see_tensor_gradients_under_create_graph(torch: Any) -> None:
    x, tx = leaf([0.5, 1.5]), twin(torch, [0.5, 1.5])
    seen = []
    h = x * x
    h.register_hook(lambda g: seen.append(g.requires_grad) or g * 2)
    (g,) = mr.autograd.grad((h * x).sum(), x, create_graph=True)
    th = tx * tx
    th.register_hook(lambda g: g * 2)
    (tg,) = torch.autograd.grad((th * tx).sum(), tx, create_graph=True)
    np.testing.assert_allclose(g.detach().numpy(), tg.detach().numpy())
    assert seen == [True]  # the gradient reaching h depends on x here, so it carries a graph


def test_gradient_penalty_step_matches_torch(torch: Any) -> None:
    rng = np.random.default_rng(0)
    x0, w0 = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))
    x = mr.tensor(x0, requires_grad=True)
    w = mr.tensor(w0, requires_grad=True)
    tx = torch.tensor(x0, requires_grad=True)
    tw = torch.tensor(w0, requires_grad=True)
    out = (x @ w).tanh().sum()
    (gx,) = mr.autograd.grad(out, x, create_graph=True)
    penalty = ((gx * gx).sum(1).sqrt() - 1) ** 2
    penalty.mean().backward()
    tout = (tx @ tw).tanh().sum()
    (tgx,) = torch.autograd.grad(tout, tx, create_graph=True)
    (((tgx * tgx).sum(1).sqrt() - 1) ** 2).mean().backward()
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-10)


def test_first_order_gradient_is_unchanged_by_the_opt_in() -> None:
    # the same backward code serves both paths: create_graph=True gives the same values
    x = leaf([0.5, -1.0, 2.0])
    f = lambda a: (mr.softmax(a * a, 0) * a.exp()).sum()  # noqa: E731
    (g1,) = mr.autograd.grad(f(x), x)
    (g2,) = mr.autograd.grad(f(x), x, create_graph=True)
    np.testing.assert_allclose(g1.numpy(), g2.detach().numpy(), rtol=1e-14)


def test_check_grads_rejects_bad_arguments() -> None:
    x = mr.tensor([1.0], dtype=mr.float64)
    with pytest.raises(ValueError, match="modes"):
        check_grads(lambda a: a * 2, (x,), order=1, modes=("sideways",))
    with pytest.raises(TypeError, match="argument 0"):
        check_grads(lambda a: a * 2, (mr.tensor([1, 2]),), order=1)


def test_grad_runs_only_what_leads_to_its_inputs() -> None:
    x, z = leaf([0.5, 1.5]), leaf([2.0, 3.0])
    calls = []
    z.register_hook(lambda g: calls.append("z"))
    h = x * 3
    h.register_hook(lambda g: calls.append("h"))
    y = (h * z).sum()
    (gh,) = mr.autograd.grad(y, h)
    np.testing.assert_allclose(gh.numpy(), z.numpy())
    assert calls == ["h"] and x.grad is None and z.grad is None  # z's and x's side never ran
