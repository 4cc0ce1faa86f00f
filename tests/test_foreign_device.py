"""CI's guard against host/device mixing: the engine run end to end on the "foreign" device.

The foreign device (tests/foreign_device.py) is a pretend GPU whose arrays refuse implicit conversion
to numpy and refuse to mix with numpy arrays, as CuPy's do. Every plain ``pytest`` run therefore
catches ``np.zeros`` where ``xp.zeros`` was meant, ``np.asarray(device_array)`` and the like:

* the guard itself is tested first (it must refuse what CuPy refuses, or it guards nothing);
* a model forward + backward, optimizer steps, losses, BatchNorm, the DataLoader and a short training
  run go through the device here, each compared with the same computation on the CPU;
* :func:`test_representative_suite_on_foreign_device` reruns the device-parametrised op test files
  with ``MINIRES_TEST_DEVICE=foreign`` in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from foreign_device import ForeignArray, foreign_device

import minires as mr
import minires.nn as nn
import minires.nn.functional as F
import minires.optim as optim
from minires import backend

HERE = Path(__file__).resolve().parent


@pytest.fixture
def foreign() -> Iterator[str]:
    with foreign_device() as name:
        yield name


# -- the guard refuses what CuPy refuses -----------------------------------------------------------
def test_guard_refuses_implicit_conversion_and_mixing(foreign: str) -> None:
    x = mr.ones(2, 3, device=foreign).data
    assert isinstance(x, ForeignArray)
    for convert in (np.asarray, np.array, np.ascontiguousarray):
        with pytest.raises(TypeError, match="[Ii]mplicit conversion to a NumPy array is not allowed"):
            convert(x)
    host = np.ones((2, 3))
    for mix in (lambda: x + host, lambda: host * x, lambda: np.maximum(x, host), lambda: np.concatenate([x, host]),
                lambda: np.where(x > 0, x, host)):
        with pytest.raises(TypeError, match="implicit conversion"):
            mix()
    xp = backend.get_xp(foreign)
    with pytest.raises(TypeError, match="foreign xp.exp"):
        xp.exp(host)  # the device's own functions refuse host arrays (cupy.exp(numpy_array) raises)


def test_guard_keeps_results_on_the_device(foreign: str) -> None:
    xp = backend.get_xp(foreign)
    x = xp.arange(6.0).reshape(2, 3)
    for result in (np.exp(x), x.sum(axis=0), x.sum(), x[0, 1], x.T @ x, xp.zeros_like(x), np.stack([x, x]), x.astype(np.float32)):
        assert isinstance(result, ForeignArray), type(result)
    assert float(x.sum()) == 15.0 and x.max().item() == 5.0  # explicit host values are fine
    np.testing.assert_array_equal(backend.to_numpy(x * 2 + 1), np.arange(6.0).reshape(2, 3) * 2 + 1)


# -- the engine on the device agrees with the CPU ------------------------------------------------
def _grads(model: nn.Module) -> dict[str, np.ndarray]:
    return {name: p.grad.numpy() for name, p in model.named_parameters()}


def test_resnet_forward_backward_matches_cpu(foreign: str) -> None:
    from minires.models import resnet20

    mr.manual_seed(1)
    cpu_model = resnet20(num_classes=10)
    dev_model = resnet20(num_classes=10)
    dev_model.load_state_dict(cpu_model.state_dict())
    dev_model.to(foreign)
    x = mr.randn(4, 3, 16, 16)
    target = mr.tensor([0, 3, 9, 3])
    losses = []
    for model, dev in ((cpu_model, "cpu"), (dev_model, foreign)):
        logits = model(x.to(dev))
        assert logits.device == dev and isinstance(logits.data, ForeignArray) == (dev == foreign)
        loss = F.cross_entropy(logits, target.to(dev), label_smoothing=0.1)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    cpu_g, dev_g = _grads(cpu_model), _grads(dev_model)
    assert all(isinstance(p.grad.data, ForeignArray) for p in dev_model.parameters())
    for name in cpu_g:
        np.testing.assert_allclose(dev_g[name], cpu_g[name], rtol=1e-4, atol=1e-6, err_msg=name)
    for name, buf in dev_model.named_buffers():  # BatchNorm running stats were updated on the device
        np.testing.assert_allclose(buf.numpy(), dict(cpu_model.named_buffers())[name].numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda ps: optim.Adam(ps, lr=0.01, weight_decay=1e-3),
    lambda ps: optim.AdamW(ps, lr=0.01, amsgrad=True),
])
def test_optimizer_steps_and_state_dict_match_cpu(foreign: str, make) -> None:
    results = []
    for dev in ("cpu", foreign):
        mr.manual_seed(2)
        model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).to(dev)
        opt = make(list(model.parameters()))
        x = mr.randn(8, 5).to(dev)
        for _ in range(3):
            opt.zero_grad()
            F.mse_loss(model(x), mr.zeros(8, 3, device=dev)).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
        state = opt.state_dict()
        opt.load_state_dict(state)  # a round trip through host arrays lands back on the device
        opt.step()
        results.append({k: v.numpy() for k, v in model.state_dict().items()})
        if dev == foreign:
            assert all(isinstance(p.data, ForeignArray) for p in model.parameters())
    for key in results[0]:
        np.testing.assert_allclose(results[1][key], results[0][key], rtol=1e-5, atol=1e-7, err_msg=key)


def test_losses_and_batch_norm_match_cpu(foreign: str) -> None:
    logits = mr.randn(6, 4, dtype=mr.float64)
    target = mr.tensor([0, 1, 2, 3, 1, 0])
    bn_x = mr.randn(3, 2, 4, 4, dtype=mr.float64)
    outs = []
    for dev in ("cpu", foreign):
        lg = logits.to(dev).detach().requires_grad_()
        bx = bn_x.to(dev).detach().requires_grad_()
        bn = nn.BatchNorm2d(2).double().to(dev)
        total = (F.cross_entropy(lg, target.to(dev), label_smoothing=0.2) + F.nll_loss(F.log_softmax(lg, 1), target.to(dev))
                 + F.mse_loss(F.softmax(lg, 1), mr.zeros(6, 4, dtype=mr.float64, device=dev)) + (bn(bx) ** 2).mean())
        bn.eval()
        total = total + bn(bx).sum() * 0.01
        total.backward()
        outs.append((total.item(), lg.grad.numpy(), bx.grad.numpy(), bn.running_var.numpy()))
    for a, b in zip(outs[0], outs[1]):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


def test_data_loader_delivers_on_the_device(foreign: str) -> None:
    from minires.data import ArrayDataset, DataLoader
    from minires.data.transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip

    images = (np.arange(6 * 3 * 8 * 8) % 251).astype(np.uint8).reshape(6, 3, 8, 8)
    labels = np.arange(6) % 3
    transform = Compose([RandomCrop(8, padding=2), RandomHorizontalFlip(), Normalize((0.5,) * 3, (0.25,) * 3)])
    batches = {}
    for dev in ("cpu", foreign):
        loader = DataLoader(ArrayDataset(images, labels), batch_size=4, shuffle=True, seed=5, device=dev, transform=transform)
        batches[dev] = [(x, y) for x, y in loader]
    for (cx, cy), (fx, fy) in zip(batches["cpu"], batches[foreign]):
        assert isinstance(fx.data, ForeignArray) and isinstance(fy.data, ForeignArray)
        np.testing.assert_array_equal(fx.numpy(), cx.numpy())
        np.testing.assert_array_equal(fy.numpy(), cy.numpy())


def test_short_training_run_on_the_device_matches_cpu(foreign: str, tmp_path) -> None:
    from minires.training import TrainConfig, Trainer

    records = {}
    for dev in ("cpu", foreign):
        config = TrainConfig(dataset="digits", model="resnet20", epochs=1, batch_size=32, train_subset=64, lr=0.05,
                             warmup_epochs=0.5, out=str(tmp_path / dev), progress=False, prefetch=1, seed=3, device=dev)
        records[dev] = Trainer(config).fit()
    cpu, dev = records["cpu"][-1], records[foreign][-1]
    assert dev["train_loss"] == pytest.approx(cpu["train_loss"], rel=1e-4)
    assert dev["test_acc"] == pytest.approx(cpu["test_acc"], abs=1e-9)


# -- the device-parametrised test files, rerun on the foreign device --------------------------------
REPRESENTATIVE = [
    "test_autograd.py", "test_ops_elementwise.py", "test_ops_activations.py", "test_ops_reductions.py", "test_ops_shape.py",
    "test_ops_linalg.py", "test_creation.py", "test_conv.py", "test_pooling.py", "test_normalization.py", "test_losses.py",
    "test_linear.py", "test_dropout.py", "test_layers.py", "test_init.py", "test_module.py", "test_optim.py",
    "test_clip_grad.py", "test_data_loader.py", "test_transforms.py", "test_serialization.py", "test_state_dict.py",
    "test_bad_input.py", "test_backend.py", "test_amp.py", "test_winograd.py",
]


@pytest.mark.skipif(os.environ.get("MINIRES_TEST_DEVICE", "cpu") != "cpu", reason="already running on a non-CPU device")
def test_representative_suite_on_foreign_device() -> None:
    files = [str(HERE / f) for f in REPRESENTATIVE if (HERE / f).exists()]
    env = dict(os.environ, MINIRES_TEST_DEVICE="foreign")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--no-header", *files],
        cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"the suite failed on the foreign device:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    assert " passed" in proc.stdout
