"""The backward engine: exact gradients on fan-out, diamonds and long residual chains; no recursion;
accumulation; retain_graph; hooks; retain_grad; no_grad; custom Functions."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import minires as mr


def leaf(values, device: str) -> mr.Tensor:
    return mr.tensor(np.asarray(values, dtype=np.float64), device=device, requires_grad=True)


def test_fan_out_sums_the_paths(device):
    # y = x*x + 3x + exp(x): x feeds three ops; dy/dx = 2x + 3 + exp(x)
    x = leaf([0.5, -1.0, 2.0], device)
    y = x * x + 3 * x + x.exp()
    y.sum().backward()
    v = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(x.grad.numpy(), 2 * v + 3 + np.exp(v), rtol=1e-14)


def test_diamond(device):
    # a -> (b = 2a, c = a^2) -> d = b * c = 2a^3; dd/da = 6a^2
    a = leaf([1.5, -2.0], device)
    b = a * 2
    c = a * a
    d = b * c
    d.sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), 6 * np.array([1.5, -2.0]) ** 2, rtol=1e-14)


def test_skip_connection_is_a_fan_out_that_rejoins(device):
    # y = x + relu(w * x) with w*x > 0: dy/dx = 1 + w, dy/dw = x
    x = leaf([1.0, 2.0], device)
    w = leaf([3.0, 0.5], device)
    y = x + mr.relu(w * x)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [4.0, 1.5])
    np.testing.assert_array_equal(w.grad.numpy(), [1.0, 2.0])


def test_thousand_residual_steps_give_the_product(device):
    # y = y + a_i * y for i = 1..1000 gives y_N = x * prod(1 + a_i), so dy_N/dx = prod(1 + a_i)
    rng = np.random.default_rng(0)
    a_values = rng.uniform(-0.002, 0.004, size=1000)
    x = leaf(1.0, device)
    y = x
    for a in a_values:
        y = y + float(a) * y
    y.backward()
    expected = np.prod(1 + a_values)
    assert y.item() == pytest.approx(expected, rel=1e-12)
    assert x.grad.item() == pytest.approx(expected, rel=1e-12)


def test_residual_steps_with_parameter_gradients(device):
    # y = y + a_i * y with every a_i a leaf: dy_N/da_j = x * prod_{i != j}(1 + a_i)
    rng = np.random.default_rng(1)
    values = rng.uniform(-0.1, 0.1, size=50)
    params = [leaf(v, device) for v in values]
    x = leaf(2.0, device)
    y = x
    for a in params:
        y = y + a * y
    y.backward()
    total = np.prod(1 + values)
    for a, v in zip(params, values):
        assert a.grad.item() == pytest.approx(2.0 * total / (1 + v), rel=1e-12)


def test_chain_of_100k_ops_has_no_recursion_limit(device):
    x = leaf([1.0], device)
    y = x
    for _ in range(100_000):
        y = y + 1.0
    (y * 2).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0])
    del y
    gc.collect()  # tearing down a 100k-deep graph must not overflow the C stack either


def test_gradients_accumulate_across_backward_calls(device):
    x = leaf([1.0, 2.0], device)
    (x * 3).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3 + 2, 3 + 4])
    x.grad = None
    (x * 3).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])


def test_grad_is_a_fresh_writable_array(device):
    # sum's backward is a broadcast view and add hands one array to both inputs: .grad must own its data
    a, b = leaf([1.0, 2.0], device), leaf([3.0, 4.0], device)
    (a + b).sum().backward()
    a.grad.zero_()
    np.testing.assert_array_equal(b.grad.numpy(), [1.0, 1.0])
    np.testing.assert_array_equal(a.grad.numpy(), [0.0, 0.0])
    g = mr.tensor(np.array([5.0, 6.0]), device=device)
    c = leaf([0.0, 0.0], device)
    c.backward(g)
    c.grad.zero_()
    np.testing.assert_array_equal(g.numpy(), [5.0, 6.0])


def test_zero_dim_results_hold_arrays(device):
    x = leaf(3.0, device)
    y = (x * x).sum()
    assert y.shape == () and hasattr(y.data, "shape")
    y.backward()
    assert x.grad.item() == 6.0
    x.grad.zero_()  # a 0-d grad must be writable too
    assert x.grad.item() == 0.0
    y2 = x * x
    y2.backward()
    y3 = x * x
    y3.backward()
    x.grad.zero_()


def test_retain_graph_allows_a_second_backward(device):
    x = leaf([1.0, 2.0], device)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [4.0, 8.0])


def test_second_backward_without_retain_graph_raises(device):
    x = leaf([1.0, 2.0], device)
    y = (x.exp() * 2).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time.*retain_graph=True"):
        y.backward()


def test_non_scalar_backward_needs_a_gradient(device):
    x = leaf([1.0, 2.0], device)
    y = x * 2
    with pytest.raises(RuntimeError, match=r"scalar outputs.*shape \(2,\)"):
        y.backward()
    y.backward(mr.tensor(np.array([1.0, 10.0]), device=device))
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 20.0])


def test_backward_gradient_of_wrong_shape_raises(device):
    x = leaf([1.0, 2.0], device)
    with pytest.raises(RuntimeError, match=r"gradient has shape \(3,\), expected .* \(2,\)"):
        (x * 2).backward(mr.ones(3, device=device))


def test_backward_on_tensor_without_grad_raises(device):
    with pytest.raises(RuntimeError, match="does not require grad"):
        mr.ones(2, device=device).sum().backward()


def test_no_grad_context_manager_and_decorator(device):
    x = leaf([1.0], device)
    with mr.no_grad():
        assert not mr.is_grad_enabled()
        y = x * 2
        with mr.enable_grad():
            z = x * 2
    assert mr.is_grad_enabled()
    assert y.grad_fn is None and not y.requires_grad
    assert z.requires_grad

    @mr.no_grad()
    def double(t):
        assert not mr.is_grad_enabled()
        return t * 2

    assert not double(x).requires_grad
    assert mr.is_grad_enabled()
    assert double.__name__ == "double"


def test_no_grad_restores_state_after_an_exception(device):
    with pytest.raises(ValueError):
        with mr.no_grad():
            raise ValueError("boom")
    assert mr.is_grad_enabled()


def test_hook_on_leaf_can_replace_the_gradient(device):
    x = leaf([1.0, 2.0], device)
    seen = []
    handle = x.register_hook(lambda g: seen.append(g.numpy().copy()) or g * 10)
    (x * 3).sum().backward()
    np.testing.assert_array_equal(seen[0], [3.0, 3.0])
    np.testing.assert_array_equal(x.grad.numpy(), [30.0, 30.0])
    handle.remove()
    x.grad = None
    (x * 3).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])
    assert len(seen) == 1


def test_hook_on_non_leaf_changes_what_flows_upstream(device):
    x = leaf([1.0, 2.0], device)
    h = x * x
    seen = []

    def hook(g):
        seen.append(g.numpy().copy())
        return g * 0.5

    handle = h.register_hook(hook)
    (h * 4).sum().backward(retain_graph=True)
    np.testing.assert_array_equal(seen[0], [4.0, 4.0])
    np.testing.assert_array_equal(x.grad.numpy(), 0.5 * 4 * 2 * np.array([1.0, 2.0]))
    handle()  # calling the handle removes the hook too
    x.grad = None
    (h * 4).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), 4 * 2 * np.array([1.0, 2.0]))
    assert len(seen) == 1


def test_hook_returning_none_keeps_the_gradient(device):
    x = leaf([1.0], device)
    x.register_hook(lambda g: None)
    (x * 5).sum().backward()
    assert x.grad.item() == 5.0


def test_retain_grad_on_non_leaf(device):
    x = leaf([1.0, 2.0], device)
    h = x * 3
    h.retain_grad()
    out = (h * h).sum()
    out.backward()
    np.testing.assert_array_equal(h.grad.numpy(), 2 * 3 * np.array([1.0, 2.0]))
    k = x * 3
    (k * k).sum().backward()
    assert k.grad is None  # without retain_grad a non-leaf keeps no grad


def test_leaf_grad_is_none_until_backward_and_detach_cuts_the_graph(device):
    x = leaf([1.0, 2.0], device)
    assert x.grad is None and x.is_leaf
    y = (x * 2).detach()
    assert y.is_leaf and not y.requires_grad
    z = (x * 2) + y * x
    z.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), 2 + y.numpy())


class Cube(mr.Function):
    """A user-written op: x^3 with the gradient 3x^2, saved input on the context."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x * x * grad


class ScaleBy(mr.Function):
    """Two arguments, one a plain number: backward returns None for it."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x * factor

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def test_custom_function(device):
    x = leaf([1.0, -2.0], device)
    y = Cube.apply(x)
    assert y.grad_fn is not None and "Cube" in repr(y)
    np.testing.assert_array_equal(y.numpy(), [1.0, -8.0])
    ScaleBy.apply(y, 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), 2 * 3 * np.array([1.0, 4.0]))
    assert mr.gradcheck(lambda v: ScaleBy.apply(Cube.apply(v), -1.5), [leaf([0.3, 1.2], device)])


def test_custom_function_returning_too_few_gradients_raises(device):
    class Broken(mr.Function):
        @staticmethod
        def forward(ctx, x, y):
            return x + y

        @staticmethod
        def backward(ctx, grad):
            return grad

    x, y = leaf([1.0], device), leaf([2.0], device)
    with pytest.raises(RuntimeError, match="Broken.backward returned 1 gradients, expected 2"):
        Broken.apply(x, y).sum().backward()


def test_custom_function_gradient_of_wrong_shape_raises(device):
    class BadShape(mr.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad.sum()

    with pytest.raises(RuntimeError, match=r"BadShape.backward: gradient for input 0 has shape \(\)"):
        BadShape.apply(leaf([1.0, 2.0], device)).sum().backward()


def test_multi_output_function_with_one_output_unused(device):
    class Split(mr.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2, x * 3

        @staticmethod
        def backward(ctx, g2, g3):
            return 2 * g2 + 3 * g3

    x = leaf([1.0, 1.0], device)
    a, b = Split.apply(x)
    b.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])


def test_integer_outputs_carry_no_gradient(device):
    x = leaf([[1.0, 3.0], [4.0, 2.0]], device)
    values, indices = x.max(dim=1)
    assert values.requires_grad and not indices.requires_grad


def test_requires_grad_false_on_non_leaf_is_refused(device):
    y = leaf([1.0], device) * 2
    with pytest.raises(RuntimeError, match="only leaf tensors"):
        y.requires_grad_(False)


def test_leaf_hook_runs_once_with_the_summed_gradient(device):
    x = leaf([1.0, 2.0], device)
    seen = []
    x.register_hook(lambda g: seen.append(g.numpy().copy()))
    (x * 2 + x * x).sum().backward()
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], 2 + 2 * np.array([1.0, 2.0]))


def test_hooks_and_retain_grad_need_a_tensor_that_requires_grad(device):
    x = mr.ones(2, device=device)
    with pytest.raises(RuntimeError, match="register_hook: cannot register a hook"):
        x.register_hook(lambda g: g)
    with pytest.raises(RuntimeError, match="retain_grad: the tensor does not require grad"):
        x.retain_grad()


class SavesATemporary(mr.Function):
    """Saves an array nothing else holds, so we can watch it being freed."""

    saved_ref = None

    @staticmethod
    def forward(ctx, x):
        import weakref

        tmp = x * 2
        SavesATemporary.saved_ref = weakref.ref(tmp)
        ctx.save_for_backward(tmp)
        return x * 3

    @staticmethod
    def backward(ctx, grad):
        (tmp,) = ctx.saved_tensors
        return grad * 3 + 0 * tmp


@pytest.mark.parametrize("retain", [False, True])
def test_saved_buffers_are_freed_after_backward_unless_retained(device, retain):
    if device != "cpu":
        pytest.skip("weak references to cupy arrays are not the point here")
    x = leaf([1.0, 2.0], device)
    y = SavesATemporary.apply(x).sum()
    gc.collect()
    assert SavesATemporary.saved_ref() is not None
    y.backward(retain_graph=retain)
    gc.collect()
    assert (SavesATemporary.saved_ref() is not None) == retain


def test_set_grad_enabled_as_a_function() -> None:
    """``mr.set_grad_enabled(mode)`` called as a function switches recording for this thread until switched back.
    (Its use as a context manager, as in PyTorch, is being added separately and is not tested here.)"""
    import threading

    x = mr.tensor(np.ones(3), requires_grad=True)
    assert mr.is_grad_enabled()
    try:
        mr.set_grad_enabled(False)
        assert not mr.is_grad_enabled()
        y = x * 2
        assert not y.requires_grad and y.grad_fn is None
        seen = []
        worker = threading.Thread(target=lambda: seen.append(mr.is_grad_enabled()))
        worker.start()
        worker.join()
        assert seen == [True]  # grad mode is per thread
        mr.set_grad_enabled(True)
        z = x * 2
        assert z.requires_grad and z.grad_fn is not None
        z.sum().backward()
        np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0, 2.0])
    finally:
        mr.set_grad_enabled(True)
