"""batch_norm: forward against the formula, running statistics, both modes' gradients, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minires as mr
from minires.ops.normalization import batch_norm
from minires.testing import float_arrays

EPS = 1e-5


def bn_reference(x, rm, rv, w, b, training, momentum=0.1, eps=EPS):
    """Batch norm straight from the definition, in float64; returns (y, new running mean, new running var)."""
    x = np.asarray(x, dtype=np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    if training or rm is None:
        mean = x.mean(axis=axes)
        var = ((x - mean.reshape(shape)) ** 2).mean(axis=axes)  # biased, for normalising
        m = x.size // x.shape[1]
        if rm is not None:
            rm = (1 - momentum) * rm + momentum * mean
            rv = (1 - momentum) * rv + momentum * var * m / (m - 1)  # unbiased, for the running value
    else:
        mean, var = rm, rv
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    if w is not None:
        y = y * w.reshape(shape)
    if b is not None:
        y = y + b.reshape(shape)
    return y, rm, rv


@st.composite
def bn_case(draw, max_side=3):
    ndim = draw(st.sampled_from([2, 3, 4]))
    n = draw(st.integers(2, 4))
    c = draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(1, max_side)) for _ in range(ndim - 2))
    shape = (n, c) + spatial
    x = draw(float_arrays(shape))
    # A near-constant channel makes the gradient ill-conditioned. Pin one element of samples 0 and 1 of each
    # channel to -1.5 and +1.5: any two values a, b among m give a variance >= (a - b)^2 / (2m) = 4.5 / m >= 0.125
    # here (m <= 36), with no draw rejected.
    first = (slice(None),) + (0,) * (ndim - 2)
    x[(0,) + first] = -1.5
    x[(1,) + first] = 1.5
    axes = (0,) + tuple(range(2, ndim))
    assert np.all(x.var(axis=axes) > 0.1)
    w = draw(float_arrays((c,), low=0.5, high=2.0))
    b = draw(float_arrays((c,)))
    rm = draw(float_arrays((c,), low=-1.0, high=1.0))
    rv = draw(float_arrays((c,), low=0.5, high=2.0))
    affine = draw(st.booleans())
    return x, (w if affine else None), (b if affine else None), rm, rv


@given(bn_case(), st.booleans())
def test_forward_and_running_stats_match_formula(case, training) -> None:
    x, w, b, rm, rv = case
    y_ref, rm_ref, rv_ref = bn_reference(x, rm, rv, w, b, training, momentum=0.3)
    RM, RV = mr.tensor(rm.copy()), mr.tensor(rv.copy())
    y = batch_norm(
        mr.tensor(x),
        RM,
        RV,
        None if w is None else mr.tensor(w),
        None if b is None else mr.tensor(b),
        training=training,
        momentum=0.3,
    )
    np.testing.assert_allclose(y.numpy(), y_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(RM.numpy(), rm_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(RV.numpy(), rv_ref, rtol=1e-12, atol=1e-12)


@given(bn_case(), st.booleans())
def test_gradcheck_both_modes(case, training) -> None:
    x, w, b, rm, rv = case
    inputs = [mr.tensor(x, requires_grad=True)]
    if w is not None:
        inputs += [mr.tensor(w, requires_grad=True), mr.tensor(b, requires_grad=True)]
    RM, RV = mr.tensor(rm), mr.tensor(rv)

    def fn(*args):
        return batch_norm(args[0], RM, RV, *args[1:], training=training)

    assert mr.gradcheck(fn, inputs, atol=1e-6, rtol=1e-4)


@given(bn_case())
def test_gradcheck_without_running_stats(case) -> None:
    x, w, b, _, _ = case
    inputs = [mr.tensor(x, requires_grad=True), mr.tensor(np.ones(x.shape[1]) if w is None else w, requires_grad=True)]
    assert mr.gradcheck(lambda t, g: batch_norm(t, None, None, g, training=False), inputs, atol=1e-6, rtol=1e-4)


def test_running_stats_update_twice_with_momentum(device) -> None:
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((6, 2, 3, 3)) * 3 + 2, rng.standard_normal((6, 2, 3, 3)) - 1
    RM, RV = mr.zeros(2, dtype=mr.float64, device=device), mr.ones(2, dtype=mr.float64, device=device)
    rm, rv = np.zeros(2), np.ones(2)
    for x in (x1, x2):
        batch_norm(mr.tensor(x, device=device), RM, RV, training=True, momentum=0.25)
        mean = x.mean(axis=(0, 2, 3))
        unbiased = x.transpose(1, 0, 2, 3).reshape(2, -1).var(axis=1, ddof=1)
        rm, rv = 0.75 * rm + 0.25 * mean, 0.75 * rv + 0.25 * unbiased
    np.testing.assert_allclose(RM.numpy(), rm, rtol=1e-12)
    np.testing.assert_allclose(RV.numpy(), rv, rtol=1e-12)


def test_training_normalises_with_biased_variance() -> None:
    x = np.random.default_rng(1).standard_normal((4, 3, 2, 2))
    y = batch_norm(mr.tensor(x), mr.zeros(3, dtype=mr.float64), mr.ones(3, dtype=mr.float64), training=True, eps=0.0)
    np.testing.assert_allclose(y.numpy().var(axis=(0, 2, 3)), 1.0, rtol=1e-10)  # ddof=0 -> exactly 1
    np.testing.assert_allclose(y.numpy().mean(axis=(0, 2, 3)), 0.0, atol=1e-12)


def test_eval_uses_running_stats_and_does_not_update_them(device) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3, 4, 4))
    rm, rv = np.array([0.5, -1.0, 2.0]), np.array([4.0, 0.25, 1.0])
    RM, RV = mr.tensor(rm.copy(), device=device), mr.tensor(rv.copy(), device=device)
    y = batch_norm(mr.tensor(x, device=device), RM, RV, training=False)
    expected = (x - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + EPS)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12)
    np.testing.assert_array_equal(RM.numpy(), rm)
    np.testing.assert_array_equal(RV.numpy(), rv)
    # each sample alone gives the same answer: nothing depends on the batch
    one = batch_norm(mr.tensor(x[:1], device=device), RM, RV, training=False)
    np.testing.assert_allclose(one.numpy(), expected[:1], rtol=1e-12)


def test_eval_backward_is_affine() -> None:
    rng = np.random.default_rng(3)
    x, g = rng.standard_normal((3, 2, 2, 2)), rng.standard_normal((3, 2, 2, 2))
    rm, rv, w = np.array([0.1, -0.2]), np.array([0.5, 2.0]), np.array([1.5, -0.5])
    X, W, B = mr.tensor(x, requires_grad=True), mr.tensor(w, requires_grad=True), mr.zeros(2, dtype=mr.float64, requires_grad=True)
    batch_norm(X, mr.tensor(rm), mr.tensor(rv), W, B, training=False).backward(mr.tensor(g))
    k = (w / np.sqrt(rv + EPS))[None, :, None, None]
    np.testing.assert_allclose(X.grad.numpy(), g * k, rtol=1e-12)
    xhat = (x - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + EPS)
    np.testing.assert_allclose(W.grad.numpy(), (g * xhat).sum(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(B.grad.numpy(), g.sum(axis=(0, 2, 3)), rtol=1e-12)


def test_no_running_stats_always_uses_batch_stats() -> None:
    x = np.random.default_rng(4).standard_normal((4, 3)) * 2 + 5
    y_eval = batch_norm(mr.tensor(x), None, None, training=False)
    y_ref, _, _ = bn_reference(x, None, None, None, None, training=True)
    np.testing.assert_allclose(y_eval.numpy(), y_ref, rtol=1e-10)


def test_float32_agrees_with_float64_and_keeps_dtype() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 4, 5, 5)) * 3 + 1
    g = rng.standard_normal(x.shape)
    w, b = rng.uniform(0.5, 2, 4), rng.standard_normal(4)
    results = {}
    for dt in (np.float32, np.float64):
        X = mr.tensor(x.astype(dt), requires_grad=True)
        W, B = mr.tensor(w.astype(dt), requires_grad=True), mr.tensor(b.astype(dt), requires_grad=True)
        RM, RV = mr.zeros(4, dtype=dt), mr.ones(4, dtype=dt)
        y = batch_norm(X, RM, RV, W, B, training=True)
        y.backward(mr.tensor(g.astype(dt)))
        results[dt] = [y.numpy(), X.grad.numpy(), W.grad.numpy(), B.grad.numpy(), RM.numpy(), RV.numpy()]
        if dt is np.float32:
            assert all(r.dtype == np.float32 for r in results[dt])
    for a, b64 in zip(results[np.float32], results[np.float64]):
        # stated tolerance: float32 within 1e-4 relative to the float64 value's scale
        np.testing.assert_allclose(a, b64, rtol=1e-4, atol=1e-4 * np.abs(b64).max())


def test_large_mean_float32_does_not_cancel_the_variance() -> None:
    x = (1000.0 + np.random.default_rng(6).standard_normal((16, 2, 8, 8))).astype(np.float32)
    y = batch_norm(mr.tensor(x), None, None, training=True).numpy()
    np.testing.assert_allclose(y.std(axis=(0, 2, 3)), 1.0, rtol=1e-3)


def test_blocked_backward_matches_single_block(monkeypatch) -> None:
    from minires.ops import normalization

    rng = np.random.default_rng(7)
    x, g = rng.standard_normal((7, 3, 4, 4)), rng.standard_normal((7, 3, 4, 4))
    grads = []
    for block in (1 << 40, 200):  # one block, then a block per sample
        monkeypatch.setattr(normalization, "_BLOCK_BYTES", block)
        X = mr.tensor(x, requires_grad=True)
        batch_norm(X, None, None, training=True).backward(mr.tensor(g))
        grads.append(X.grad.numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12, atol=1e-14)


def test_only_x_requires_grad_and_only_weight_requires_grad() -> None:
    x = np.random.default_rng(8).standard_normal((4, 2, 3))
    W = mr.ones(2, dtype=mr.float64, requires_grad=True)
    batch_norm(mr.tensor(x), None, None, W, training=True).sum().backward()
    np.testing.assert_allclose(W.grad.numpy(), 0.0, atol=1e-12)  # sum of x_hat over a channel is 0
    X = mr.tensor(x, requires_grad=True)
    batch_norm(X, None, None, mr.ones(2, dtype=mr.float64), training=True).sum().backward()
    np.testing.assert_allclose(X.grad.numpy(), 0.0, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1, 1), (1, 2, 1)])
def test_one_value_per_channel_in_training_raises(shape) -> None:
    with pytest.raises(ValueError, match=r"batch_norm: expected more than 1 value per channel when training.*\(1, "):
        batch_norm(mr.zeros(*shape), mr.zeros(shape[1]), mr.ones(shape[1]), training=True)
    batch_norm(mr.zeros(*shape), mr.zeros(shape[1]), mr.ones(shape[1]), training=False)  # eval is fine


def test_errors_name_op_and_shapes() -> None:
    x = mr.zeros(4, 3, 2, 2)
    with pytest.raises(ValueError, match=r"batch_norm: expected input of shape \(N, C\).*\(3,\)"):
        batch_norm(mr.zeros(3), None, None, training=True)
    with pytest.raises(ValueError, match=r"batch_norm: weight has shape \(4,\), expected \(3,\)"):
        batch_norm(x, None, None, mr.ones(4), training=True)
    with pytest.raises(ValueError, match=r"batch_norm: bias has shape \(2,\), expected \(3,\)"):
        batch_norm(x, None, None, mr.ones(3), mr.zeros(2), training=True)
    with pytest.raises(ValueError, match=r"batch_norm: running_mean has shape \(5,\), expected \(3,\)"):
        batch_norm(x, mr.zeros(5), mr.ones(5))
    with pytest.raises(ValueError, match="both running_mean and running_var"):
        batch_norm(x, mr.zeros(3), None)
    with pytest.raises(TypeError, match="batch_norm: expected a floating-point tensor"):
        batch_norm(mr.tensor(np.zeros((2, 3), dtype=np.int64)), None, None, training=True)


def test_matches_torch_when_installed() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    for shape in [(5, 3), (4, 3, 6), (3, 4, 5, 5)]:
        for training in (True, False):
            x, g = rng.standard_normal(shape) * 2 + 1, rng.standard_normal(shape)
            c = shape[1]
            w, b, rm, rv = rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(c), rng.uniform(0.5, 2, c)
            ours = [mr.tensor(a, requires_grad=True) for a in (x, w, b)]
            theirs = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
            RM, RV, tRM, tRV = mr.tensor(rm.copy()), mr.tensor(rv.copy()), torch.tensor(rm.copy()), torch.tensor(rv.copy())
            y = batch_norm(ours[0], RM, RV, ours[1], ours[2], training=training, momentum=0.2)
            ty = torch.nn.functional.batch_norm(theirs[0], tRM, tRV, theirs[1], theirs[2], training=training, momentum=0.2)
            y.backward(mr.tensor(g))
            ty.backward(torch.tensor(g))
            np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
            for o, t in zip(ours, theirs):
                np.testing.assert_allclose(o.grad.numpy(), t.grad.numpy(), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(RM.numpy(), tRM.numpy(), rtol=1e-12)
            np.testing.assert_allclose(RV.numpy(), tRV.numpy(), rtol=1e-12)
