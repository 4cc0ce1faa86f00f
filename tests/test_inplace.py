"""In-place ops with PyTorch's rules, version counters, grad-mode switches, and gradient checks on
hooks and ``.grad`` assignment. Expected gradients come from hand derivations or finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minires as mr
import minires.nn as nn
import minires.optim as optim
from minires.testing import float_arrays, shapes

STALE = "modified by an inplace operation"
FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def leaf(values, device: str = "cpu") -> mr.Tensor:
    return mr.tensor(np.asarray(values, dtype=np.float64), device=device, requires_grad=True)


# ----- in-place ops ---------------------------------------------------------------------------------
def test_hand_written_sgd_updates_the_model_and_keeps_requires_grad(device):
    mr.manual_seed(0)
    model = nn.Linear(3, 2).to(device)
    x = mr.randn(4, 3, device=device)
    model(x).sum().backward()
    before = [p.numpy().copy() for p in model.parameters()]
    grads = [p.grad.numpy().copy() for p in model.parameters()]
    with mr.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    for p, b, g in zip(model.parameters(), before, grads):
        np.testing.assert_allclose(p.numpy(), b - np.float32(0.1) * g, rtol=1e-6)
        assert p.requires_grad and p.is_leaf
    model(x).sum().backward()  # a second step still works


@pytest.mark.parametrize(
    ("method", "arg", "expected"),
    [
        ("__iadd__", 2.0, lambda a: a + 2),
        ("__isub__", 2.0, lambda a: a - 2),
        ("__imul__", 3.0, lambda a: a * 3),
        ("__itruediv__", 4.0, lambda a: a / 4),
        ("add_", 2.0, lambda a: a + 2),
        ("sub_", 2.0, lambda a: a - 2),
        ("mul_", 3.0, lambda a: a * 3),
        ("div_", 4.0, lambda a: a / 4),
        ("fill_", 7.0, lambda a: np.full_like(a, 7)),
        ("copy_", np.array([9.0, 8.0, 7.0]), lambda a: np.array([9.0, 8.0, 7.0])),
    ],
)
def test_in_place_methods_mutate_the_same_array(method, arg, expected, device):
    a = np.array([1.0, -2.0, 3.0])
    t = mr.tensor(a, device=device)
    array = t.data
    out = getattr(t, method)(mr.tensor(arg, device=device) if isinstance(arg, np.ndarray) else arg)
    assert out is t and t.data is array and t._version == 1
    np.testing.assert_allclose(t.numpy(), expected(a))


def test_zero_clamp_relu_in_place(device):
    t = mr.tensor([-1.0, 0.5, 2.0], device=device)
    t.clamp_(-0.5, 1.0)
    np.testing.assert_allclose(t.numpy(), [-0.5, 0.5, 1.0])
    t.relu_()
    np.testing.assert_allclose(t.numpy(), [0.0, 0.5, 1.0])
    t.zero_()
    np.testing.assert_allclose(t.numpy(), [0.0, 0.0, 0.0])
    assert t._version == 3


def test_add_with_alpha_and_addcmul(device):
    t = mr.tensor([1.0, 2.0], device=device)
    t.add_(mr.tensor([1.0, 1.0], device=device), alpha=-0.5)
    np.testing.assert_allclose(t.numpy(), [0.5, 1.5])
    t.addcmul_(mr.tensor([2.0, 2.0], device=device), mr.tensor([3.0, 1.0], device=device), value=0.5)
    np.testing.assert_allclose(t.numpy(), [3.5, 2.5])


def test_in_place_on_a_leaf_that_requires_grad_raises_outside_no_grad(device):
    w = leaf([1.0, 2.0], device)
    for change in (lambda: w.__iadd__(1), lambda: w.mul_(2), lambda: w.zero_(), lambda: w.__setitem__(0, 5.0)):
        with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place"):
            change()
    np.testing.assert_allclose(w.numpy(), [1.0, 2.0])
    assert w._version == 0


def test_in_place_on_a_view_of_a_leaf_raises(device):
    w = leaf([1.0, 2.0, 3.0], device)
    with pytest.raises(RuntimeError, match="a view of a leaf Variable"):
        w[0:2].add_(1)


def test_in_place_on_a_non_leaf_is_recorded(device):
    # y = x * 2; y *= x  ->  y = 2 x^2, dy/dx = 4x ; then y += 1 ; y /= x  ->  (2x^2 + 1) / x
    x = leaf([1.5, -2.0, 0.5], device)
    y = x * 2
    y *= x
    y += 1
    y /= x
    assert y.grad_fn is not None
    y.sum().backward()
    v = np.array([1.5, -2.0, 0.5])
    np.testing.assert_allclose(y.numpy(), (2 * v**2 + 1) / v)
    np.testing.assert_allclose(x.grad.numpy(), 2 - 1 / v**2, rtol=1e-12)


def test_in_place_with_a_grad_requiring_operand_makes_a_non_leaf(device):
    w = leaf([2.0, 3.0], device)
    buf = mr.ones(2, dtype=mr.float64, device=device)
    buf *= w
    buf.mul_(w)
    buf.sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), [4.0, 6.0])


def test_setitem_on_a_non_leaf_is_recorded(device):
    x = leaf([1.0, 2.0, 3.0], device)
    y = x * 1
    y[1] = x[0] * 3
    y.sum().backward()
    np.testing.assert_allclose(y.numpy(), [1.0, 3.0, 3.0])
    np.testing.assert_allclose(x.grad.numpy(), [4.0, 0.0, 1.0])


def test_copy_and_fill_route_gradients(device):
    x = leaf([1.0, 2.0], device)
    src = leaf([5.0], device)
    y = x * 2
    y.copy_(src * src)  # broadcast (1,) -> (2,): d/dsrc sum = 2 * 2 * src
    y.sum().backward()
    np.testing.assert_allclose(src.grad.numpy(), [20.0])
    assert x.grad is None or np.all(x.grad.numpy() == 0)


def test_in_place_that_changes_dtype_kind_raises(device):
    t = mr.tensor([1, 2], device=device)
    with pytest.raises(RuntimeError, match="can't be cast"):
        t += 0.5


def test_in_place_cannot_broadcast_the_tensor_itself(device):
    t = mr.zeros(3, device=device)
    with pytest.raises(RuntimeError, match="cannot change the shape"):
        t += mr.ones(2, 3, device=device)


def test_in_place_on_an_expanded_tensor_is_a_clear_error(device):
    t = mr.zeros(1, device=device).expand(3)
    with pytest.raises(RuntimeError, match="add_: cannot write into this tensor's data"):
        t.add_(1)


def test_in_place_on_a_base_with_live_views_in_the_graph_raises(device):
    x = leaf([1.0, 2.0], device)
    y = x * 1
    v = y[0:1]
    with pytest.raises(RuntimeError, match="has views"):
        y.mul_(2)
    assert v.shape == (1,)


# ----- version counters ------------------------------------------------------------------------------
def test_modifying_a_saved_output_raises_at_backward(device):
    x = leaf([0.1, 0.2], device)
    y = x.exp()
    with mr.no_grad():
        y[0] = 100.0
    with pytest.raises(RuntimeError, match=r"\[Exp, float64 \(2,\)\] is at version 1; expected version 0"):
        y.sum().backward()


def test_modifying_a_saved_input_raises_at_backward(device):
    a = leaf([1.0, 2.0], device)
    b = mr.tensor([3.0, 4.0], dtype=mr.float64, device=device)
    y = a * b
    b.add_(1)  # b does not require grad: allowed, but Mul saved it
    with pytest.raises(RuntimeError, match=STALE):
        y.sum().backward()


def test_unsaved_tensors_may_change(device):
    a = leaf([1.0, 2.0], device)
    b = mr.tensor([3.0, 4.0], dtype=mr.float64, device=device)
    y = a + b  # add saves nothing
    b.add_(1)
    y.sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), [1.0, 1.0])


def test_views_share_the_version_counter(device):
    base = mr.zeros(2, 3, device=device)
    v = base.reshape(6)
    d = base.detach()
    v.add_(1)
    assert base._version == v._version == d._version == 1
    base[0, 0] = 5.0
    assert v._version == 2
    assert v.numpy()[0] == 5.0


def test_change_through_a_view_is_caught(device):
    x = leaf([0.5, 1.0], device)
    y = x.exp()
    with mr.no_grad():
        y.detach().reshape(2, 1).mul_(2)
    with pytest.raises(RuntimeError, match=STALE):
        y.sum().backward()


def test_optimizer_step_between_forward_and_backward_raises(device):
    model = nn.Linear(2, 1).to(device)
    opt = optim.SGD(model.parameters(), lr=0.1)
    x = mr.randn(3, 2, device=device)
    model(x).sum().backward()
    loss = (model(x) * model(x)).sum()
    opt.step()
    with pytest.raises(RuntimeError, match=STALE):
        loss.backward()


def test_custom_function_saving_an_input_is_checked(device):
    class Square(mr.Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a * a

        @staticmethod
        def backward(ctx, g):
            (a,) = ctx.saved_tensors
            return 2 * a * g

    x = leaf([1.0, 2.0], device)
    h = x * 1
    y = Square.apply(h)
    with mr.no_grad():
        h.add_(1)
    with pytest.raises(RuntimeError, match=r"\[Square,"):
        y.sum().backward()


# ----- grad mode -------------------------------------------------------------------------------------
def test_set_grad_enabled_as_function_context_and_decorator():
    assert mr.is_grad_enabled()
    with mr.set_grad_enabled(False):
        assert not mr.is_grad_enabled()
        with mr.set_grad_enabled(True):
            assert mr.is_grad_enabled()
        assert not mr.is_grad_enabled()
    assert mr.is_grad_enabled()

    @mr.set_grad_enabled(False)
    def f(x):
        return x * 2

    assert mr.is_grad_enabled()  # decorating leaves the mode alone
    assert f(leaf([1.0])).grad_fn is None
    assert mr.is_grad_enabled()

    mr.set_grad_enabled(False)
    try:
        assert not mr.is_grad_enabled()
        assert (leaf([1.0]) * 2).grad_fn is None
    finally:
        mr.set_grad_enabled(True)
    assert (leaf([1.0]) * 2).grad_fn is not None


@pytest.mark.parametrize(
    "make", [lambda: mr.no_grad(), lambda: mr.set_grad_enabled(False), lambda: mr.inference_mode()]
)
def test_grad_mode_is_restored_on_exceptions(make):
    with pytest.raises(KeyError):
        with make():
            raise KeyError("boom")
    assert mr.is_grad_enabled()

    @make()
    def fails():
        raise KeyError("boom")

    with pytest.raises(KeyError):
        fails()
    assert mr.is_grad_enabled()


def test_enable_grad_restored_on_exception_inside_no_grad():
    with mr.no_grad():
        with pytest.raises(ValueError):
            with mr.enable_grad():
                assert mr.is_grad_enabled()
                raise ValueError
        assert not mr.is_grad_enabled()
    assert mr.is_grad_enabled()


def test_set_grad_enabled_wants_a_bool():
    with pytest.raises(TypeError, match="bool"):
        mr.set_grad_enabled("no")
    assert mr.is_grad_enabled()


# ----- hooks and .grad ---------------------------------------------------------------------------------
def test_hook_returning_another_shape_raises_naming_the_hook(device):
    w = leaf([1.0, 2.0, 3.0], device)

    def squash(g):
        return g.mean()

    w.register_hook(squash)
    with pytest.raises(RuntimeError, match=r"hook .*squash.* shape \(\).*\(3,\)"):
        (w * 2).sum().backward()
    assert w.grad is None


def test_non_leaf_hook_returning_another_dtype_raises(device):
    x = leaf([1.0, 2.0], device)
    y = x * 2
    y.register_hook(lambda g: g.float())
    with pytest.raises(RuntimeError, match="dtype float32"):
        y.sum().backward()


def test_hook_returning_a_correct_gradient_replaces_it(device):
    x = leaf([1.0, 2.0], device)
    x.register_hook(lambda g: g * 10)
    (x * 2).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [20.0, 20.0])


def test_assigning_a_wrong_grad_raises_at_assignment(device):
    w = leaf([1.0, 2.0], device)
    with pytest.raises(RuntimeError, match=r"shape \(3,\), expected the tensor's shape \(2,\)"):
        w.grad = mr.zeros(3, dtype=mr.float64, device=device)
    with pytest.raises(RuntimeError, match="dtype float32"):
        w.grad = mr.zeros(2, device=device)
    with pytest.raises(TypeError, match="Tensor or None"):
        w.grad = np.zeros(2)
    w.grad = mr.ones(2, dtype=mr.float64, device=device)
    w.grad = None


# ----- the same scenarios in PyTorch (an extra oracle when torch is installed) -----------------------------
def _scenario_leaf_iadd(lib, f64):
    w = lib.tensor([1.0, 2.0], dtype=f64, requires_grad=True)
    w += 1


def _scenario_saved_output_changed(lib, f64):
    x = lib.tensor([0.1, 0.2], dtype=f64, requires_grad=True)
    y = x.exp()
    with lib.no_grad():
        y[0] = 5.0
    y.sum().backward()
    return x.grad.numpy()


def _scenario_saved_input_changed(lib, f64):
    a = lib.tensor([1.0, 2.0], dtype=f64, requires_grad=True)
    b = lib.tensor([3.0, 4.0], dtype=f64)
    y = a * b
    b.add_(1)
    y.sum().backward()
    return a.grad.numpy()


def _scenario_unsaved_input_changed(lib, f64):
    a = lib.tensor([1.0, 2.0], dtype=f64, requires_grad=True)
    b = lib.tensor([3.0, 4.0], dtype=f64)
    y = a + b
    b.add_(1)
    (y * y).sum().backward()
    return a.grad.numpy()


def _scenario_non_leaf_chain(lib, f64):
    x = lib.tensor([1.5, -2.0, 0.5], dtype=f64, requires_grad=True)
    y = x * 2
    y *= x
    y.sub_(x)
    y /= x
    y.clamp_(-10.0, 2.5)
    y.sum().backward()
    return np.concatenate([x.grad.numpy(), y.detach().numpy()])


def _scenario_setitem(lib, f64):
    x = lib.tensor([1.0, 2.0, 3.0], dtype=f64, requires_grad=True)
    y = x * 1
    y[1] = x[0] * 3
    y[2] = 7.0
    (y * y).sum().backward()
    return x.grad.numpy()


def _scenario_sgd_under_no_grad(lib, f64):
    w = lib.tensor([1.0, -1.0], dtype=f64, requires_grad=True)
    for _ in range(3):
        (w * w * w).sum().backward()
        with lib.no_grad():
            w -= 0.1 * w.grad
            w.grad.zero_()
    return np.concatenate([w.detach().numpy(), [float(w.requires_grad), float(w.is_leaf)]])


@pytest.mark.parametrize(
    "scenario",
    [_scenario_leaf_iadd, _scenario_saved_output_changed, _scenario_saved_input_changed,
     _scenario_unsaved_input_changed, _scenario_non_leaf_chain, _scenario_setitem, _scenario_sgd_under_no_grad],
)
def test_in_place_scenarios_match_pytorch(scenario):
    torch = pytest.importorskip("torch")

    def outcome(lib, f64):
        try:
            return "ok", scenario(lib, f64)
        except RuntimeError as exc:
            return "raises", str(exc).split(":")[0] if "inplace operation" in str(exc) else str(exc)

    ours, theirs = outcome(mr, mr.float64), outcome(torch, torch.float64)
    assert ours[0] == theirs[0], (ours, theirs)
    if ours[0] == "ok":
        if ours[1] is not None or theirs[1] is not None:
            np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-12)
    else:
        assert ours[1] == theirs[1]


# ----- property: a recorded in-place op has the out-of-place op's value and gradients ----------------------
_PAIRS = {
    "add_": (lambda y, c: y.add_(c), lambda y, c: y + c),
    "sub_": (lambda y, c: y.sub_(c, alpha=2.0), lambda y, c: y - 2.0 * c),
    "mul_": (lambda y, c: y.mul_(c), lambda y, c: y * c),
    "div_": (lambda y, c: y.div_(c), lambda y, c: y / c),
    "addcmul_": (lambda y, c: y.addcmul_(c, c, value=0.5), lambda y, c: y + 0.5 * c * c),
    "lerp_": (lambda y, c: y.lerp_(c, 0.25), lambda y, c: y + 0.25 * (c - y)),
    "copy_": (lambda y, c: y.copy_(c), lambda y, c: c * 1),
}


@FIXTURE_OK
@given(data=st.data(), name=st.sampled_from(sorted(_PAIRS)))
def test_recorded_in_place_equals_out_of_place(device, data, name):
    shape = data.draw(shapes(min_dims=1, max_dims=2, max_side=3))
    x_values = data.draw(float_arrays(shape, low=0.5, high=2.0))
    c_values = data.draw(float_arrays(shape, low=0.5, high=2.0))
    in_place, out_of_place = _PAIRS[name]

    def through(op):
        x, c = leaf(x_values, device), leaf(c_values, device)
        y = op(x.exp(), c)  # x.exp() saves its output: the in-place op must not disturb it
        (y * y).sum().backward()
        grads = [np.zeros(shape) if t.grad is None else t.grad.numpy() for t in (x, c)]  # copy_: x gets none
        return (y.numpy(), *grads)

    for a, b in zip(through(lambda y, c: in_place(y * 1, c)), through(out_of_place)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
