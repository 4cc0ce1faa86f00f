"""gradcheck can fail: planted wrong backwards are caught, in full and fast mode, with a message that
says where and by how much. Also: float32 warning, zero-output-gradient check, argument errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import minires as mr


def leaf(values, device: str) -> mr.Tensor:
    return mr.tensor(np.asarray(values, dtype=np.float64), device=device, requires_grad=True)


class WrongSquare(mr.Function):
    """x^2 whose backward claims 2x + 0.5 at the element at flat index 2, 2x elsewhere (a planted bug)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        g = 2 * x * grad
        g.reshape(-1)[2] += 0.5 * grad.reshape(-1)[2]
        return g


class WrongSecondInput(mr.Function):
    """x * y whose gradient for y is off by a factor 1.1 (the first input's is right)."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return x * y

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        return grad * y, 1.1 * grad * x


class IgnoresOutputGradient(mr.Function):
    """x^2 whose backward forgets to multiply by the incoming gradient."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x * x).sum()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x


def test_correct_gradients_pass(device):
    x = leaf([[0.3, -1.2, 2.0], [0.7, 0.1, -0.4]], device)
    w = leaf([[1.0], [-2.0], [0.5]], device)
    assert mr.gradcheck(lambda a, b: mr.tanh(a @ b).exp(), [x, w]) is True
    assert mr.gradcheck(lambda a, b: mr.tanh(a @ b).exp(), [x, w], fast_mode=True) is True


def test_planted_wrong_backward_is_caught_with_where_and_how_far(device):
    x = leaf([[0.5, -1.0], [1.5, 2.0]], device)
    with pytest.raises(mr.GradcheckError) as info:
        mr.gradcheck(WrongSquare.apply, [x])
    message = str(info.value)
    assert "input 0" in message
    assert "(shape (2, 2))" in message
    # the worst element: output (1, 0) with respect to input (1, 0) -> Jacobian entry (2, 2); 2*1.5 + 0.5 vs 3
    assert "(2, 2)" in message and "input element (1, 0)" in message
    assert "analytic 3.5" in message and "numerical 3" in message
    assert "atol 1e-05" in message and "rtol 0.001" in message


def test_wrong_gradient_of_the_second_input_is_named(device):
    x, y = leaf([1.0, 2.0], device), leaf([3.0, -1.0], device)
    with pytest.raises(mr.GradcheckError, match="input 1"):
        mr.gradcheck(WrongSecondInput.apply, [x, y])
    # with only the first input requiring grad the check passes: its gradient is right
    assert mr.gradcheck(WrongSecondInput.apply, [x, mr.tensor(np.array([3.0, -1.0]), device=device)])


def test_fast_mode_catches_the_planted_bug(device):
    x = leaf([[0.5, -1.0], [1.5, 2.0]], device)
    with pytest.raises(mr.GradcheckError, match=r"fast mode.*inputs \[0\].*analytic"):
        mr.gradcheck(WrongSquare.apply, [x], fast_mode=True)
    y = leaf([1.0, 2.0], device)
    with pytest.raises(mr.GradcheckError):
        mr.gradcheck(WrongSecondInput.apply, [y, leaf([3.0, -1.0], device)], fast_mode=True)


def test_raise_exception_false_returns_false(device):
    x = leaf([0.5, -1.0, 1.5], device)
    assert mr.gradcheck(WrongSquare.apply, [x], raise_exception=False) is False


def test_zero_output_gradient_must_give_zero_input_gradient(device):
    x = leaf([0.5, -1.0], device)
    with pytest.raises(mr.GradcheckError, match="zero output gradient gave a nonzero gradient for input 0"):
        mr.gradcheck(IgnoresOutputGradient.apply, [x])


def test_warns_on_float32_inputs(device):
    x = mr.tensor([0.5, 1.0], device=device, requires_grad=True)
    with pytest.warns(UserWarning, match="float32, not float64"):
        mr.gradcheck(lambda v: v * 2, [x], eps=1e-2, atol=1e-2, rtol=1e-2)


def test_no_warning_on_float64_inputs(device):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mr.gradcheck(lambda v: v * 2, [leaf([0.5, 1.0], device)])


def test_inputs_are_restored_after_the_check(device):
    values = np.array([0.25, -0.5, 1.0])
    x = leaf(values, device)
    mr.gradcheck(lambda v: v.exp(), [x])
    mr.gradcheck(lambda v: v.exp(), [x], fast_mode=True)
    np.testing.assert_array_equal(x.numpy(), values)
    assert x.grad is None


def test_non_contiguous_inputs_and_several_outputs(device):
    x = mr.tensor(np.arange(6.0).reshape(2, 3) / 7, device=device).T.detach().requires_grad_()
    assert not x.data.flags.c_contiguous
    assert mr.gradcheck(lambda v: (v.exp(), v * v), [x])


def test_inputs_without_grad_or_non_leaf_are_refused(device):
    with pytest.raises(ValueError, match="no input requires grad"):
        mr.gradcheck(lambda v: v * 2, [mr.tensor(np.array([1.0]), device=device)])
    x = leaf([1.0], device) * 2
    with pytest.raises(ValueError, match="not a leaf"):
        mr.gradcheck(lambda v: v * 2, [x])


def test_gradcheck_accepts_a_single_tensor(device):
    assert mr.gradcheck(mr.exp, leaf([0.1, 0.2], device))
