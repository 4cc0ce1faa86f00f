"""Mixed precision: GradScaler's dynamic loss scaling (PyTorch's semantics) and autocast's float16 compute
with float32 master weights, on numpy float16 (and on whatever MINIRES_TEST_DEVICE names)."""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
import minires.nn as nn
import minires.nn.functional as F
import minires.optim as optim
from minires import amp


def _param(device: str, values: list[float]) -> nn.Parameter:
    return nn.Parameter(mr.tensor(values, device=device))


def test_scale_then_unscale_recovers_the_true_gradient(device: str) -> None:
    w = _param(device, [1.0, -2.0, 3.0])
    opt = optim.SGD([w], lr=0.1)
    scaler = amp.GradScaler(init_scale=1024.0)
    loss = (w * w).sum()
    scaled = scaler.scale(loss)
    assert scaled.item() == pytest.approx(1024.0 * 14.0)
    scaled.backward()
    np.testing.assert_allclose(w.grad.numpy(), 1024.0 * np.array([2.0, -4.0, 6.0]))
    scaler.unscale_(opt)
    np.testing.assert_allclose(w.grad.numpy(), [2.0, -4.0, 6.0])
    scaler.step(opt)  # no second unscale inside step
    np.testing.assert_allclose(w.numpy(), [0.8, -1.6, 2.4], rtol=1e-6)
    scaler.update()
    assert scaler.get_scale() == 1024.0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow is the point
@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_step_is_skipped_and_scale_backs_off_on_inf_or_nan(device: str, bad: float) -> None:
    w = _param(device, [1.0, 2.0])
    opt = optim.SGD([w], lr=0.1)
    scaler = amp.GradScaler(init_scale=8.0, growth_interval=1)
    scaler.scale((w * mr.tensor([bad, 1.0], device=device)).sum()).backward()
    scaler.step(opt)
    assert scaler.found_inf(opt)
    np.testing.assert_array_equal(w.numpy(), [1.0, 2.0])  # untouched
    scaler.update()
    assert scaler.get_scale() == 4.0  # backoff 0.5, and no growth although growth_interval is 1


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow is the point
def test_float16_overflow_is_caught(device: str) -> None:
    """A float16 loss times 2**16 overflows to inf: the step is skipped, the scale halves."""
    w = _param(device, [300.0])
    opt = optim.SGD([w], lr=0.1)
    scaler = amp.GradScaler()  # 65536
    loss = (w.half() * 0.5).sum()  # 150, finite in float16; 150 * 65536 is not
    scaled = scaler.scale(loss)
    assert not np.isfinite(scaled.item())
    scaled.backward()
    scaler.step(opt)
    scaler.update()
    assert w.item() == 300.0 and scaler.get_scale() == 32768.0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow is the point
def test_scale_grows_after_growth_interval_clean_steps(device: str) -> None:
    w = _param(device, [1.0])
    opt = optim.SGD([w], lr=0.01)
    scaler = amp.GradScaler(init_scale=4.0, growth_factor=2.0, backoff_factor=0.25, growth_interval=3)
    scales = []
    for i in range(7):
        opt.zero_grad()
        factor = np.inf if i == 4 else 1.0
        scaler.scale((w * factor).sum()).backward()
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    # clean, clean, clean (-> 8), clean, inf (-> 2, tracker reset), clean, clean
    assert scales == [4.0, 4.0, 8.0, 8.0, 2.0, 2.0, 2.0]
    assert scaler.state_dict() == {"scale": 2.0, "growth_factor": 2.0, "backoff_factor": 0.25, "growth_interval": 3,
                                   "_growth_tracker": 2}
    twin = amp.GradScaler()
    twin.load_state_dict(scaler.state_dict())
    assert twin.state_dict() == scaler.state_dict()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow is the point
def test_scaler_matches_torch_grad_scaler() -> None:
    """Same sequence of clean/overflowing steps as torch.amp.GradScaler (on CPU), same scales and params."""
    torch = pytest.importorskip("torch")
    pattern = [1.0, 1.0, np.inf, 1.0, 1.0, 1.0, np.nan, 1.0]
    tw = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    topt = torch.optim.SGD([tw], lr=0.1)
    tscaler = torch.amp.GradScaler("cpu", init_scale=16.0, growth_interval=2)
    mw = nn.Parameter(mr.tensor([1.0, -1.0]))
    mopt = optim.SGD([mw], lr=0.1)
    mscaler = amp.GradScaler(init_scale=16.0, growth_interval=2)
    for f in pattern:
        topt.zero_grad()
        tscaler.scale((tw * tw * f).sum()).backward()
        tscaler.step(topt)
        tscaler.update()
        mopt.zero_grad()
        mscaler.scale((mw * mw * f).sum()).backward()
        mscaler.step(mopt)
        mscaler.update()
        assert mscaler.get_scale() == tscaler.get_scale()
        np.testing.assert_allclose(mw.numpy(), tw.detach().numpy(), rtol=1e-6)


def test_misuse_is_refused(device: str) -> None:
    w = _param(device, [1.0])
    opt = optim.SGD([w], lr=0.1)
    scaler = amp.GradScaler()
    with pytest.raises(RuntimeError, match="no inf checks were recorded"):
        scaler.update()
    scaler.scale(w.sum()).backward()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="already called on this optimizer"):
        scaler.unscale_(opt)
    scaler.step(opt)
    with pytest.raises(RuntimeError, match="GradScaler.step: already called"):
        scaler.step(opt)
    with pytest.raises(ValueError, match="backoff_factor"):
        amp.GradScaler(backoff_factor=2.0)
    off = amp.GradScaler(enabled=False)
    loss = w.sum()
    assert off.scale(loss) is loss and off.get_scale() == 1.0 and off.state_dict() == {} and not off.is_enabled()


def test_autocast_runs_gemms_in_float16_with_float32_master_grads(device: str) -> None:
    mr.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))
    model.to(device)
    ref = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))
    ref.load_state_dict(model.state_dict())
    ref.double()
    x = mr.randn(6, 3, 4, 4)
    target = mr.tensor([0, 1, 2, 3, 4, 0])
    with amp.autocast():
        assert amp.get_autocast_dtype() == np.float16
        h = model[0](x.to(device))
        assert h.dtype == np.float16
        assert model[1](h).dtype == np.float32  # batch_norm upcasts
        logits = model(x.to(device))
        assert logits.dtype == np.float16
        loss = F.cross_entropy(logits, target.to(device))
        assert loss.dtype == np.float32
        with amp.autocast(enabled=False):
            assert model(x.to(device)).dtype == np.float32
    assert not amp.is_autocast_enabled()
    loss.backward()
    F.cross_entropy(ref(x.double()), target).backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert p.dtype == np.float32 and p.grad.dtype == np.float32, name
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=2e-2, atol=2e-3, err_msg=name)


def test_autocast_refuses_bfloat16_and_non_float16() -> None:
    with pytest.raises(TypeError, match="bfloat16 is not supported"):
        amp.autocast(dtype="bfloat16")
    with pytest.raises(TypeError, match="must be float16"):
        amp.autocast(dtype=np.float32)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow is the point
def test_mixed_precision_training_converges(device: str) -> None:
    """A small conv net on separable synthetic images, trained under autocast + GradScaler, learns the
    task as the float32 run does; the too-large initial scale forces skipped steps first."""
    rng = np.random.default_rng(0)
    n = 64
    labels = rng.integers(0, 2, n)
    images = rng.normal(0, 1, (n, 1, 6, 6)).astype(np.float32)
    images[labels == 1, :, :3, :] += 1.5  # class 1: bright top half
    x, y = mr.tensor(images, device=device), mr.tensor(labels, device=device)

    def run(mixed: bool) -> tuple[float, float, amp.GradScaler]:
        mr.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2)).to(device)
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        scaler = amp.GradScaler(init_scale=2.0**30, enabled=mixed)
        for _ in range(40):
            opt.zero_grad()
            with amp.autocast(enabled=mixed):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        with mr.no_grad():
            model.eval()
            acc = float((model(x).argmax(1).numpy() == labels).mean())
        return loss.item(), acc, scaler

    loss16, acc16, scaler = run(True)
    loss32, acc32, _ = run(False)
    assert scaler.get_scale() < 2.0**30  # it backed off from the overflowing start
    assert acc16 >= 0.95 and acc32 >= 0.95
    assert loss16 < 0.2 and abs(loss16 - loss32) < 0.05


def test_update_with_new_scale_and_the_getters() -> None:
    scaler = amp.GradScaler(init_scale=8.0, growth_factor=3.0, backoff_factor=0.25, growth_interval=5)
    assert (scaler.get_scale(), scaler.get_growth_factor(), scaler.get_backoff_factor(), scaler.get_growth_interval()) == (
        8.0, 3.0, 0.25, 5)
    assert scaler.is_enabled()
    scaler.update(new_scale=2.0)  # no step needed: the scale is simply set
    assert scaler.get_scale() == 2.0
    w = mr.tensor(np.array([1.0, 2.0]), requires_grad=True)
    opt = optim.SGD([w], lr=0.1)
    scaler.scale((w * w).sum()).backward()
    np.testing.assert_allclose(w.grad.numpy(), 2.0 * 2 * np.array([1.0, 2.0]))  # d(S * sum w^2)/dw with S = 2
    scaler.step(opt)
    scaler.update(new_scale=16.0)  # overrides the growth/backoff rule
    assert scaler.get_scale() == 16.0
    with pytest.raises(ValueError, match="new_scale must be > 0"):
        scaler.update(new_scale=0.0)
    off = amp.GradScaler(enabled=False)
    off.update(new_scale=4.0)
    assert off.get_scale() == 1.0


def test_autocast_as_a_decorator() -> None:
    """``@amp.autocast()`` switches float16 compute on for the call and restores the state after it."""
    x = mr.tensor(np.ones((2, 3), np.float32))
    w = mr.tensor(np.ones((4, 3), np.float32))

    @amp.autocast()
    def forward() -> tuple[object, object]:
        return amp.get_autocast_dtype(), F.linear(x, w).dtype

    assert amp.get_autocast_dtype() is None
    inside, out_dtype = forward()
    assert inside == np.float16 and out_dtype == np.float16
    assert amp.get_autocast_dtype() is None and F.linear(x, w).dtype == np.float32

    @amp.autocast(enabled=False)
    def off() -> object:
        return F.linear(x, w).dtype

    with amp.autocast():
        assert off() == np.float32
        assert amp.get_autocast_dtype() == np.float16
