"""nll_loss, cross_entropy and mse_loss: values against loop oracles, gradients, PyTorch's semantics, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minires as mr
from minires.ops.activations import log_softmax
from minires.ops.losses import cross_entropy, mse_loss, nll_loss
from minires.testing import float_arrays, shapes

IGNORE = -100


def ce_reference(z, t, weight=None, ignore_index=IGNORE, reduction="mean", eps=0.0):
    """Cross entropy by explicit loops over the (N, C, *d) positions, with math.log / math.exp."""
    z = np.asarray(z, dtype=np.float64)
    c = z.shape[1]
    w = np.ones(c) if weight is None else np.asarray(weight, dtype=np.float64)
    losses = np.zeros(t.shape)
    denom = 0.0
    for pos in np.ndindex(*t.shape):
        n, rest = pos[0], pos[1:]
        cls = int(t[pos])
        if cls == ignore_index:
            continue
        row = [z[(n, k) + rest] for k in range(c)]
        top = max(row)
        lse = top + math.log(sum(math.exp(v - top) for v in row))
        logp = [v - lse for v in row]
        nll = -w[cls] * logp[cls]
        smooth = -sum(w[k] * logp[k] for k in range(c))
        losses[pos] = (1 - eps) * nll + eps / c * smooth
        denom += w[cls]
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / denom


@st.composite
def class_case(draw):
    n = draw(st.integers(1, 4))
    c = draw(st.integers(2, 5))
    extra = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    z = draw(float_arrays((n, c) + extra, low=-4.0, high=4.0))
    t = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n * int(np.prod(extra)), max_size=n * int(np.prod(extra)))))
    t = t.reshape((n,) + extra).astype(np.int64)
    ignored = draw(st.lists(st.booleans(), min_size=t.size, max_size=t.size))
    t.ravel()[np.array(ignored, dtype=bool)[: t.size]] = IGNORE
    if (t == IGNORE).all():
        t.ravel()[0] = 0  # keep the mean defined
    weight = draw(st.none() | float_arrays((c,), low=0.2, high=3.0))
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    return z, t, weight, reduction


@given(class_case(), st.sampled_from([0.0, 0.1, 0.45]))
def test_cross_entropy_matches_loop_oracle(case, eps) -> None:
    z, t, weight, reduction = case
    w = None if weight is None else mr.tensor(weight)
    out = cross_entropy(mr.tensor(z), mr.tensor(t), weight=w, reduction=reduction, label_smoothing=eps)
    np.testing.assert_allclose(out.numpy(), ce_reference(z, t, weight, reduction=reduction, eps=eps), rtol=1e-10, atol=1e-12)


@given(class_case(), st.sampled_from([0.0, 0.2]))
def test_cross_entropy_gradcheck(case, eps) -> None:
    z, t, weight, reduction = case
    w = None if weight is None else mr.tensor(weight)
    T = mr.tensor(t)
    fn = lambda x: cross_entropy(x, T, weight=w, reduction=reduction, label_smoothing=eps)  # noqa: E731
    assert mr.gradcheck(fn, [mr.tensor(z, requires_grad=True)])


@given(class_case())
def test_nll_loss_matches_formula_and_gradcheck(case) -> None:
    z, t, weight, reduction = case
    lp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    w = np.ones(z.shape[1]) if weight is None else weight
    per = np.zeros(t.shape)
    denom = 0.0
    for pos in np.ndindex(*t.shape):
        if t[pos] != IGNORE:
            per[pos] = -w[t[pos]] * lp[(pos[0], t[pos]) + pos[1:]]
            denom += w[t[pos]]
    expected = {"none": per, "sum": per.sum(), "mean": per.sum() / denom}[reduction]
    W = None if weight is None else mr.tensor(weight)
    T = mr.tensor(t)
    np.testing.assert_allclose(nll_loss(mr.tensor(lp), T, weight=W, reduction=reduction).numpy(), expected, rtol=1e-12)
    assert mr.gradcheck(lambda x: nll_loss(x, T, weight=W, reduction=reduction), [mr.tensor(lp, requires_grad=True)])


@given(class_case())
def test_cross_entropy_equals_nll_of_log_softmax(case) -> None:
    z, t, weight, reduction = case
    W = None if weight is None else mr.tensor(weight)
    a = cross_entropy(mr.tensor(z), mr.tensor(t), weight=W, reduction=reduction)
    b = nll_loss(log_softmax(mr.tensor(z), dim=1), mr.tensor(t), weight=W, reduction=reduction)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-14)


def test_label_smoothing_hand_formula() -> None:
    z = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    t = np.array([0, 2])
    eps = 0.3
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    q = np.full((2, 3), eps / 3)
    q[np.arange(2), t] += 1 - eps  # the smoothed target
    expected = -(q * logp).sum(axis=1).mean()
    X = mr.tensor(z, requires_grad=True)
    loss = cross_entropy(X, mr.tensor(t), label_smoothing=eps)
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-12)
    loss.backward()
    softmax = np.exp(logp)
    np.testing.assert_allclose(X.grad.numpy(), (softmax - q) / 2, rtol=1e-12)  # softmax - smoothed one-hot


def test_ignore_index_excluded_from_loss_and_gradient() -> None:
    z = np.random.default_rng(0).standard_normal((4, 3))
    t = np.array([1, 7, 0, 7])
    X = mr.tensor(z, requires_grad=True)
    loss = cross_entropy(X, mr.tensor(t), ignore_index=7, label_smoothing=0.1)
    np.testing.assert_allclose(loss.item(), ce_reference(z[[0, 2]], t[[0, 2]], eps=0.1), rtol=1e-12)
    loss.backward()
    np.testing.assert_array_equal(X.grad.numpy()[[1, 3]], 0.0)
    none = cross_entropy(mr.tensor(z), mr.tensor(t), ignore_index=7, reduction="none").numpy()
    np.testing.assert_array_equal(none[[1, 3]], 0.0)
    with np.errstate(all="raise"):  # every target ignored: the mean is 0/0 = nan (as PyTorch), quietly
        assert math.isnan(cross_entropy(mr.tensor(z), mr.tensor(np.full(4, 7)), ignore_index=7).item())


def test_nll_weighted_mean_divides_by_weights_of_targets() -> None:
    lp = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]))
    w = np.array([2.0, 1.0, 4.0])
    loss = nll_loss(mr.tensor(lp), mr.tensor(np.array([0, 1])), weight=mr.tensor(w))
    expected = (2.0 * -np.log(0.5) + 1.0 * -np.log(0.8)) / 3.0
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-12)


def test_cross_entropy_is_stable_for_huge_logits() -> None:
    z = np.array([[1000.0, -1000.0, 0.0], [-5e4, 5e4, 5e4]], dtype=np.float32)
    X = mr.tensor(z, requires_grad=True)
    loss = cross_entropy(X, mr.tensor(np.array([1, 0])))
    loss.backward()
    assert np.isfinite(loss.item()) and np.isfinite(X.grad.numpy()).all()
    np.testing.assert_allclose(loss.item(), (2000.0 + 1e5 + math.log(2)) / 2, rtol=1e-6)  # row 2: -(-5e4) + 5e4 + log 2


def test_float32_agrees_with_float64() -> None:
    rng = np.random.default_rng(1)
    z, t = rng.standard_normal((16, 10)) * 3, rng.integers(0, 10, 16)
    w = rng.uniform(0.5, 2, 10)
    out = {}
    for dt in (np.float32, np.float64):
        X = mr.tensor(z.astype(dt), requires_grad=True)
        loss = cross_entropy(X, mr.tensor(t), weight=mr.tensor(w.astype(dt)), label_smoothing=0.1)
        loss.backward()
        assert loss.dtype == dt and X.grad.dtype == dt
        out[dt] = (loss.numpy(), X.grad.numpy())
    for a, b in zip(out[np.float32], out[np.float64]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # stated tolerance for float32


def test_numpy_int_target_and_device(device) -> None:
    z = np.random.default_rng(2).standard_normal((3, 4))
    t = np.array([0, 3, 2])
    a = cross_entropy(mr.tensor(z), t)
    b = cross_entropy(mr.tensor(z, device=device), mr.tensor(t, device=device))
    np.testing.assert_allclose(a.item(), b.item(), rtol=1e-12)


@given(float_arrays(shapes(min_dims=0, max_dims=3, max_side=4)), st.sampled_from(["mean", "sum", "none"]))
def test_mse_loss_value_and_gradcheck(x, reduction) -> None:
    y = np.cos(np.arange(x.size)).reshape(x.shape)
    sq = (x - y) ** 2
    expected = {"none": sq, "sum": sq.sum(), "mean": sq.mean()}[reduction]
    np.testing.assert_allclose(mse_loss(mr.tensor(x), mr.tensor(y), reduction=reduction).numpy(), expected, rtol=1e-12)
    inputs = [mr.tensor(x, requires_grad=True), mr.tensor(y, requires_grad=True)]
    assert mr.gradcheck(lambda a, b: mse_loss(a, b, reduction=reduction), inputs)


def test_errors() -> None:
    z = mr.zeros(3, 4)
    with pytest.raises(IndexError, match=r"cross_entropy: target 4 is out of bounds for 4 classes"):
        cross_entropy(z, mr.tensor(np.array([0, 4, 1])))
    with pytest.raises(IndexError, match=r"nll_loss: target -3 is out of bounds for 4 classes"):
        nll_loss(z, mr.tensor(np.array([0, -3, 1])))
    with pytest.raises(TypeError, match=r"nll_loss: target must hold integer class indices.*float32"):
        nll_loss(z, mr.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match=r"cross_entropy: target must hold integer"):
        cross_entropy(z, mr.zeros(3, 4))
    with pytest.raises(ValueError, match=r"cross_entropy: target has shape \(2,\), expected \(3,\)"):
        cross_entropy(z, mr.tensor(np.array([0, 1])))
    with pytest.raises(ValueError, match=r"target has shape \(3,\), expected \(3, 5\)"):
        cross_entropy(mr.zeros(3, 4, 5), mr.tensor(np.array([0, 1, 2])))
    with pytest.raises(ValueError, match=r"reduction must be one of 'mean', 'sum', 'none', got 'avg'"):
        cross_entropy(z, mr.tensor(np.array([0, 1, 2])), reduction="avg")
    with pytest.raises(ValueError, match=r"mse_loss: reduction must be one of"):
        mse_loss(z, z, reduction="elementwise_mean")
    with pytest.raises(ValueError, match=r"mse_loss: input has shape \(3, 4\) but target has shape \(4,\)"):
        mse_loss(z, mr.zeros(4))
    with pytest.raises(ValueError, match=r"cross_entropy: weight has shape \(3,\), expected \(4,\)"):
        cross_entropy(z, mr.tensor(np.array([0, 1, 2])), weight=mr.ones(3))
    with pytest.raises(ValueError, match=r"label_smoothing must be between 0 and 1"):
        cross_entropy(z, mr.tensor(np.array([0, 1, 2])), label_smoothing=1.5)
    with pytest.raises(TypeError, match=r"cross_entropy: expected a floating-point tensor"):
        cross_entropy(mr.tensor(np.zeros((3, 4), dtype=np.int64)), mr.tensor(np.array([0, 1, 2])))


def test_matches_torch_when_installed() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    for shape, tshape in [((6, 5), (6,)), ((3, 4, 2, 3), (3, 2, 3))]:
        z = rng.standard_normal(shape)
        t = rng.integers(0, shape[1], tshape)
        t.ravel()[0] = IGNORE
        w = rng.uniform(0.5, 2, shape[1])
        for reduction in ("mean", "sum", "none"):
            for eps in (0.0, 0.25):
                for weight in (None, w):
                    X, tX = mr.tensor(z, requires_grad=True), torch.tensor(z, requires_grad=True)
                    ours = cross_entropy(
                        X, mr.tensor(t), None if weight is None else mr.tensor(weight), reduction=reduction, label_smoothing=eps
                    )
                    theirs = F.cross_entropy(
                        tX, torch.tensor(t), None if weight is None else torch.tensor(weight), reduction=reduction, label_smoothing=eps
                    )
                    g = rng.standard_normal(ours.shape)
                    ours.backward(mr.tensor(g))
                    theirs.backward(torch.tensor(g))
                    np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), rtol=1e-10, atol=1e-12)
                    np.testing.assert_allclose(X.grad.numpy(), tX.grad.numpy(), rtol=1e-10, atol=1e-12)
            lp = F.log_softmax(torch.tensor(z), 1).numpy()
            ours = nll_loss(mr.tensor(lp), mr.tensor(t), mr.tensor(w), reduction=reduction)
            theirs = F.nll_loss(torch.tensor(lp), torch.tensor(t), torch.tensor(w), reduction=reduction)
            np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-12, atol=1e-14)
        a, b = rng.standard_normal(shape), rng.standard_normal(shape)
        np.testing.assert_allclose(
            mse_loss(mr.tensor(a), mr.tensor(b)).item(), F.mse_loss(torch.tensor(a), torch.tensor(b)).item(), rtol=1e-12
        )
