"""Autograd behaviour a mutation run (docs/mutation_testing.md) found unguarded: ``inference_mode``,
``.grad`` accumulating across ``backward(create_graph=True)`` calls, and the corners of
``mr.autograd.functional`` (omitted ``v``, unused inputs, constant gradients, ``create_graph``, bad ``v``).

Oracles are closed forms of small polynomials (d/dx x^3 = 3x^2, ...), as torch.autograd.functional gives.
"""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
from minires.autograd import functional as AF


def t64(a, grad: bool = False) -> mr.Tensor:
    return mr.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


# ----- grad modes --------------------------------------------------------------------------------

def test_inference_mode_records_no_graph_and_false_leaves_the_mode() -> None:
    x = t64([1.0, 2.0], grad=True)
    with mr.inference_mode():
        assert not mr.is_grad_enabled()
        assert not (x * 2).requires_grad
    assert mr.is_grad_enabled()
    with mr.inference_mode(False):
        assert (x * 2).requires_grad

    @mr.inference_mode()
    def doubled(t: mr.Tensor) -> mr.Tensor:
        return t * 2

    assert not doubled(x).requires_grad and mr.is_grad_enabled()


# ----- the engine under create_graph -------------------------------------------------------------

def test_grad_accumulates_across_create_graph_backwards_and_stays_differentiable() -> None:
    """Two ``backward(create_graph=True)`` of sum(x^2) leave .grad = 2x + 2x = 4x, itself on a graph:
    d/dx sum(.grad) = 4 (PyTorch's AccumulateGrad, out of place)."""
    x = t64([1.0, -3.0], grad=True)
    (x * x).sum().backward(create_graph=True)
    (x * x).sum().backward(create_graph=True)
    np.testing.assert_allclose(x.grad.numpy(), [4.0, -12.0])
    assert x.grad.requires_grad
    (d,) = mr.autograd.grad(x.grad.sum(), x)
    np.testing.assert_allclose(d.numpy(), [4.0, 4.0])


# ----- autograd.functional -----------------------------------------------------------------------

def test_jvp_with_v_omitted_for_one_element_inputs_and_detached_by_default() -> None:
    """d/dx x^3 at 2 is 12 (v = 1 implied); the results carry no graph unless create_graph=True."""
    x = t64(2.0)
    out, ju = AF.jvp(lambda a: a**3, x)
    assert float(out.item()) == 8.0 and float(ju.item()) == pytest.approx(12.0)
    assert not out.requires_grad and not ju.requires_grad
    with pytest.raises(ValueError, match="jvp: v can be omitted only when every input has one element"):
        AF.jvp(lambda a: a**3, t64([1.0, 2.0]))


def test_vjp_gives_zeros_for_an_unused_input() -> None:
    x, y = t64([1.0, 2.0]), t64([5.0])
    _, (gx, gy) = AF.vjp(lambda a, b: a * 3.0, (x, y), t64([1.0, -1.0]))
    np.testing.assert_allclose(gx.numpy(), [3.0, -3.0])
    np.testing.assert_array_equal(gy.numpy(), [0.0])


def test_vjp_with_create_graph_can_be_differentiated_again() -> None:
    """vjp of x^3 with v is 3 x^2 v; with create_graph=True both results keep a graph, and
    d/dx sum(3 x^2 v) = 6 x v."""
    x, v = t64([1.0, 2.0], grad=True), t64([0.5, -1.0])
    out, g = AF.vjp(lambda a: a**3, x, v, create_graph=True)
    assert out.requires_grad and g.requires_grad
    np.testing.assert_allclose(g.numpy(), 3 * np.array([1.0, 4.0]) * v.numpy())
    (d,) = mr.autograd.grad(g.sum(), x)
    np.testing.assert_allclose(d.numpy(), 6 * x.numpy() * v.numpy())


def test_hessian_of_a_linear_and_of_a_constant_function_is_zero() -> None:
    """A linear function's gradient is constant (no graph) and a constant's does not exist: the Hessian is
    zeros of shape x.shape + x.shape either way, as PyTorch's."""
    x = t64([1.0, 2.0, 3.0])
    w = t64([0.5, -1.0, 2.0])
    for func in (lambda a: (a * w).sum(), lambda a: mr.tensor(7.0, dtype=mr.float64)):
        h = AF.hessian(func, x)
        assert h.shape == (3, 3)
        np.testing.assert_array_equal(h.numpy(), np.zeros((3, 3)))


def test_functional_errors_name_the_function() -> None:
    ints = mr.tensor([1, 2])
    for name, call in [
        ("jvp", lambda: AF.jvp(lambda a: a, ints, ints)),
        ("vjp", lambda: AF.vjp(lambda a: a, ints)),
        ("hessian", lambda: AF.hessian(lambda a: a.sum(), ints)),
    ]:
        with pytest.raises(TypeError, match=f"^{name}: input 0 must be floating point, got dtype int64"):
            call()
    with pytest.raises(ValueError, match=r"^vjp: v\[0\] has shape \(3,\), expected \(2,\) \(the shape of output 0\)"):
        AF.vjp(lambda a: a * 2, t64([1.0, 2.0]), t64([1.0, 1.0, 1.0]))
    with pytest.raises(TypeError, match="^vjp: v must be a Tensor or a tuple of Tensors, got list"):
        AF.vjp(lambda a: a * 2, t64([1.0, 2.0]), [1.0, 1.0])
    with pytest.raises(TypeError, match="^jvp: func's output must be a Tensor or a tuple of Tensors, got float"):
        AF.jvp(lambda a: 1.0, t64([1.0]), t64([1.0]))
    with pytest.raises(TypeError, match="^vjp: func's output must be a Tensor or a tuple of Tensors, got float"):
        AF.vjp(lambda a: 1.0, t64([1.0]))
    with pytest.raises(ValueError, match="^hessian: func must return a single one-element Tensor"):
        AF.hessian(lambda a: a * 2, t64([1.0, 2.0]))


def test_backward_accepts_a_plain_list_as_the_output_gradient() -> None:
    """``gradient=`` may be any array-like of the output's shape (a list here), taken in the output's dtype."""
    x = mr.tensor([1.0, 2.0], requires_grad=True)
    (x * 3.0).backward(gradient=[1.0, -2.0])
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, -6.0])
    assert x.grad.dtype == np.float32
    (g,) = mr.autograd.grad(x * 3.0, x, grad_outputs=[[0.5, 1.0]])
    np.testing.assert_array_equal(g.numpy(), [1.5, 3.0])


class ScaleFunction(mr.Function):
    """2x + y, saving a view (the transpose) of x, as a user-written op may."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x.T)
        return x * 2 + y

    @staticmethod
    def backward(ctx, g):
        ctx.saved_tensors  # reading them runs the version check
        return g * 2, g


def _view_and_other() -> tuple[mr.Tensor, mr.Tensor]:
    """x: a view (row 0) of a tensor on the graph, so x's array and the saved x.T share an owner; y: unrelated."""
    base = mr.tensor(np.arange(12.0).reshape(2, 2, 3), requires_grad=True) * 1.0
    return base[0], mr.tensor(np.ones((2, 3)), requires_grad=True)


def test_an_in_place_change_of_an_input_whose_view_was_saved_is_caught() -> None:
    """As PyTorch: backward refuses when a saved array (here a view of the input x, itself a view) was changed
    in place after forward, and the message names the op without its "Function" suffix."""
    x, y = _view_and_other()
    out = ScaleFunction.apply(x, y)
    with mr.no_grad():
        x.add_(1.0)
    with pytest.raises(RuntimeError, match=r"modified by an inplace operation: \[Scale, float64 \(3, 2\)\] is at version 1"):
        out.sum().backward()


def test_an_in_place_change_of_an_unsaved_input_is_fine() -> None:
    x, y = _view_and_other()
    out = ScaleFunction.apply(x, y)
    with mr.no_grad():
        y.add_(1.0)  # y was not saved: its change cannot make the gradient wrong
    out.sum().backward()
    np.testing.assert_array_equal(y.grad.numpy(), np.ones((2, 3)))
