"""Gradient clipping: clip_grad_norm_'s total norm and scaled gradients against the numpy formula,
in-place behaviour, non-finite norms, and clip_grad_value_."""

from __future__ import annotations

import math

import numpy as np
import pytest

import minires as mr
from minires.backend import device_of, to_numpy
from minires.nn.utils import clip_grad_norm_, clip_grad_value_

GRADS = [np.array([3.0, -4.0, 1.0]), np.array([[0.5, -2.0], [1.5, 0.0]]), np.array([-7.0])]


def make_params(device: str = "cpu", dtype=np.float64, grads=GRADS):
    params = []
    for g in grads:
        p = mr.tensor(np.zeros_like(g, dtype=dtype), device=device, requires_grad=True)
        p.grad = mr.tensor(g.astype(dtype), device=device)
        params.append(p)
    return params


def numpy_total_norm(grads, norm_type: float) -> float:
    flat = np.concatenate([g.ravel() for g in grads])
    if norm_type == math.inf:
        return float(np.abs(flat).max())
    return float((np.abs(flat) ** norm_type).sum() ** (1 / norm_type))


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 5.0, 1e3])
def test_total_norm_and_scaled_grads_match_numpy(norm_type: float, max_norm: float) -> None:
    params = make_params()
    total = clip_grad_norm_(params, max_norm, norm_type=norm_type)
    want = numpy_total_norm(GRADS, norm_type)
    assert isinstance(total, mr.Tensor) and total.shape == ()
    assert total.item() == pytest.approx(want, rel=1e-12)
    scale = min(1.0, max_norm / (want + 1e-6))
    for p, g in zip(params, GRADS):
        np.testing.assert_allclose(p.grad.data, g * scale, rtol=1e-12)
    if scale < 1:
        assert numpy_total_norm([p.grad.data for p in params], norm_type) == pytest.approx(max_norm, rel=1e-5)


def test_in_place_float32_on_device(device: str) -> None:
    params = make_params(device, np.float32)
    arrays = [p.grad.data for p in params]
    total = clip_grad_norm_(iter(params), 1.0)
    assert total.dtype == np.float32 and total.device == device
    for p, a, g in zip(params, arrays, GRADS):
        assert p.grad.data is a and a.dtype == np.float32 and device_of(a) == device
        np.testing.assert_allclose(to_numpy(a), g / (numpy_total_norm(GRADS, 2) + 1e-6), rtol=1e-5)


def test_single_tensor_none_grads_and_empty() -> None:
    p, q = make_params(grads=GRADS[:2])
    q.grad = None
    total = clip_grad_norm_(p, 1.0)
    assert total.item() == pytest.approx(math.sqrt(26.0))
    np.testing.assert_allclose(p.grad.data, GRADS[0] / (math.sqrt(26.0) + 1e-6))
    assert clip_grad_norm_([q], 1.0).item() == 0.0


def test_non_finite_norm() -> None:
    params = make_params(grads=[np.array([1.0, np.inf]), np.array([2.0])])
    with pytest.raises(RuntimeError, match="total norm of order 2.0 .* is inf"):
        clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    np.testing.assert_array_equal(params[1].grad.data, [2.0])  # nothing scaled before the error
    with np.errstate(invalid="ignore"):  # inf * 0 -> nan in the infinite gradient, as in PyTorch
        total = clip_grad_norm_(params, 1.0)
    assert math.isinf(total.item())
    np.testing.assert_array_equal(params[1].grad.data, [0.0])  # PyTorch: scaled by 1/inf


def test_clip_grad_value() -> None:
    params = make_params()
    arrays = [p.grad.data for p in params]
    clip_grad_value_(params, 1.5)
    for p, a, g in zip(params, arrays, GRADS):
        assert p.grad.data is a
        np.testing.assert_array_equal(a, np.clip(g, -1.5, 1.5))


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_parity_with_torch(norm_type: float) -> None:
    torch = pytest.importorskip("torch")
    params = make_params()
    total = clip_grad_norm_(params, 2.0, norm_type=norm_type)
    tparams = []
    for g in GRADS:
        t = torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
        t.grad = torch.from_numpy(g.copy())
        tparams.append(t)
    ttotal = torch.nn.utils.clip_grad_norm_(tparams, 2.0, norm_type=norm_type)
    assert total.item() == pytest.approx(ttotal.item(), rel=1e-12)
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p.grad.data, t.grad.numpy(), rtol=1e-12)
