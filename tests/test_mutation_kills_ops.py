"""Behaviour of minires.ops that a mutation run (docs/mutation_testing.md) found unguarded.

Each test pins something a user meets -- an edge shape PyTorch accepts, an output that must not carry a
gradient, the error a bad argument gets -- against an independent oracle: explicit NumPy/``math`` loops or
float64 finite differences (``mr.gradcheck``), never the code under test.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import minires as mr
import minires.nn.functional as F


def _log_softmax_loop(z: np.ndarray) -> list[float]:
    """log softmax of a 1-D vector with math.exp / math.log, shifted by the maximum."""
    top = max(z)
    lse = top + math.log(sum(math.exp(v - top) for v in z))
    return [v - lse for v in z]


# ----- shape ops on 0-d tensors ------------------------------------------------------------------

def test_flatten_of_a_0d_tensor_is_one_element() -> None:
    """torch.flatten(scalar) -> shape (1,); the gradient flows back to the 0-d input."""
    x = mr.tensor(2.5, dtype=mr.float64, requires_grad=True)
    y = mr.flatten(x)
    assert y.shape == (1,)
    np.testing.assert_array_equal(y.numpy(), [2.5])
    (y * 3.0).sum().backward()
    assert x.grad.shape == ()
    assert float(x.grad.numpy()) == 3.0


# ----- reductions --------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [mr.amax, mr.amin])
def test_amax_amin_over_a_nonempty_dim_of_an_empty_tensor(fn) -> None:
    """Reducing a dim of size 3 of a (0, 3) tensor is fine (PyTorch gives shape (0,)); only reducing the
    size-0 dim itself has no answer."""
    x = mr.zeros(0, 3)
    assert fn(x, dim=1).shape == (0,)
    assert fn(x, dim=1, keepdim=True).shape == (0, 1)
    with pytest.raises(ValueError, match="size 0"):
        fn(x, dim=0)


@pytest.mark.parametrize("which", ["max", "min"])
def test_max_min_along_dim_indices_carry_no_gradient(which: str) -> None:
    """(values, indices) = x.max(dim): indices are integers and never part of the graph; values' gradient
    goes to the chosen element of each row (checked against a direct argmax)."""
    a = np.array([[1.0, 5.0, 2.0], [7.0, -1.0, 3.0]])
    x = mr.tensor(a, dtype=mr.float64, requires_grad=True)
    values, indices = getattr(x, which)(dim=1)
    assert not indices.requires_grad and indices.grad_fn is None
    assert values.requires_grad
    pick = a.argmax(axis=1) if which == "max" else a.argmin(axis=1)
    np.testing.assert_array_equal(indices.numpy(), pick)
    values.sum().backward()
    expected = np.zeros_like(a)
    expected[np.arange(2), pick] = 1.0
    np.testing.assert_array_equal(x.grad.numpy(), expected)


# ----- losses on one unbatched sample ------------------------------------------------------------

@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_of_one_unbatched_sample(smoothing: float) -> None:
    """PyTorch accepts logits (C,) with a 0-d target: loss = -(1-eps) logp[t] - eps/C sum_c logp[c]."""
    z = np.array([0.3, -1.2, 2.0, 0.5])
    logp = _log_softmax_loop(z)
    expected = -(1 - smoothing) * logp[2] - smoothing / 4 * sum(logp)
    x = mr.tensor(z, dtype=mr.float64, requires_grad=True)
    t = mr.tensor(2)
    loss = F.cross_entropy(x, t, label_smoothing=smoothing)
    assert loss.shape == ()
    assert float(loss.item()) == pytest.approx(expected, rel=1e-12)
    assert mr.gradcheck(lambda v: F.cross_entropy(v, t, label_smoothing=smoothing), (x,))


def test_nll_loss_of_one_unbatched_sample() -> None:
    """nll_loss(log_probs (C,), target ()) = -w[t] log_probs[t]; its gradient is -w[t] at t, 0 elsewhere."""
    lp = np.array([-0.5, -2.0, -1.1])
    w = np.array([0.5, 2.0, 3.0])
    x = mr.tensor(lp, dtype=mr.float64, requires_grad=True)
    t = mr.tensor(1)
    loss = F.nll_loss(x, t, weight=mr.tensor(w, dtype=mr.float64), reduction="sum")
    assert float(loss.item()) == pytest.approx(-w[1] * lp[1], rel=1e-12)
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), [0.0, -2.0, 0.0])
    assert mr.gradcheck(lambda v: F.nll_loss(v, t), (x,))


# ----- indexing ----------------------------------------------------------------------------------

def test_one_hot_refuses_negative_classes_naming_the_value() -> None:
    with pytest.raises(ValueError, match="one_hot: class values must be non-negative, got -3"):
        F.one_hot(mr.tensor([1, -3, 0]))


# ----- kink conventions and keepdim in backward -------------------------------------------------

def test_sqrt_gradient_at_zero_is_inf_without_a_warning() -> None:
    """d sqrt(x)/dx = 1 / (2 sqrt(x)) is +inf at 0 (PyTorch's value); computing it must not warn."""
    x = mr.tensor([0.0, 4.0], dtype=mr.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mr.sqrt(x).sum().backward()
    assert np.isposinf(x.grad.numpy()[0])
    assert x.grad.numpy()[1] == 0.25


@pytest.mark.parametrize("name", ["var", "std"])
@pytest.mark.parametrize("dim", [0, 1, (0, 2)])
def test_var_std_with_keepdim_value_and_gradient(name: str, dim) -> None:
    """keepdim=True keeps the reduced axes as size 1 in the value, and the gradient still has x's shape."""
    a = np.random.default_rng(0).normal(size=(3, 4, 2))
    x = mr.tensor(a, dtype=mr.float64, requires_grad=True)
    y = getattr(x, name)(dim=dim, keepdim=True)
    expected = getattr(np, name)(a, axis=dim, ddof=1, keepdims=True)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12)
    assert mr.gradcheck(lambda v: getattr(v, name)(dim=dim, keepdim=True), (x,))


# ----- the fused BatchNorm + add + ReLU ----------------------------------------------------------

def test_batch_norm_add_relu_default_momentum_updates_running_stats_as_batch_norm() -> None:
    """F.batch_norm_add_relu in training: relu(batch-normalised x + residual), and the running statistics
    move by PyTorch's default momentum 0.1 (unbiased batch variance), as F.batch_norm's do."""
    rng = np.random.default_rng(1)
    a, r = rng.normal(size=(4, 3, 2, 2)), rng.normal(size=(4, 3, 2, 2))
    mean0, var0 = rng.normal(size=3), rng.uniform(0.5, 2.0, size=3)
    running_mean, running_var = mr.tensor(mean0.copy()), mr.tensor(var0.copy())
    y = F.batch_norm_add_relu(mr.tensor(a), mr.tensor(r), running_mean, running_var, training=True)
    mu, var_b = a.mean(axis=(0, 2, 3)), a.var(axis=(0, 2, 3))
    expected = np.maximum((a - mu[None, :, None, None]) / np.sqrt(var_b[None, :, None, None] + 1e-5) + r, 0.0)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-6)
    n = a.size // 3
    np.testing.assert_allclose(running_mean.numpy(), 0.9 * mean0 + 0.1 * mu, rtol=1e-6)
    np.testing.assert_allclose(running_var.numpy(), 0.9 * var0 + 0.1 * var_b * n / (n - 1), rtol=1e-6)


# ----- indexing: basic indices give views, advanced ones copies -------------------------------------

def test_basic_indexing_gives_views_and_advanced_indexing_copies() -> None:
    """As NumPy and PyTorch: ints, slices, None and ... index a view (an in-place change of the base shows
    through it); a list of indices gathers a copy (it does not)."""
    base = np.arange(6.0).reshape(2, 3)
    t = mr.tensor(base.copy())
    row, cols, expanded = t[0], t[:, 1:], t[..., None, 1]
    gathered = t[[0, 1]]
    line = mr.tensor([1.0, 2.0, 3.0])
    element = line[1]  # a 0-d view, as PyTorch's (numpy alone would hand back a scalar copy)
    t.add_(10.0)
    line.add_(10.0)
    assert element.shape == () and float(element.item()) == 12.0
    np.testing.assert_array_equal(row.numpy(), base[0] + 10)
    np.testing.assert_array_equal(cols.numpy(), base[:, 1:] + 10)
    np.testing.assert_array_equal(expanded.numpy(), base[..., None, 1] + 10)
    np.testing.assert_array_equal(gathered.numpy(), base)


# ----- type promotion with 0-d tensors -----------------------------------------------------------

@pytest.mark.parametrize("kind", ["float", "int"])
def test_a_0d_tensor_does_not_widen_a_tensor_with_dims_of_its_category(kind: str) -> None:
    """PyTorch's rule, on either side of the operator: float32 (3,) + 0-d float64 stays float32 and
    int32 (3,) + 0-d int64 stays int32 (NumPy would widen both); the values are the plain sums."""
    if kind == "float":
        a, b, dtype = mr.tensor([1.0, 2.0, 3.0]), mr.tensor(0.5, dtype=mr.float64), np.float32
    else:
        a, b, dtype = mr.tensor([1, 2, 3], dtype=mr.int32), mr.tensor(4, dtype=mr.int64), np.int32
    expected = a.numpy() + b.numpy()
    for y in (a + b, b + a, a * b - b):
        assert y.dtype == dtype and y.shape == (3,)
    np.testing.assert_array_equal((a + b).numpy(), expected.astype(dtype))
    np.testing.assert_array_equal((b + a).numpy(), expected.astype(dtype))
