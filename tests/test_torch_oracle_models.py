"""Every ResNet against an independent PyTorch implementation (tests/torch_resnet.py), in float64.

For each net: the PyTorch model gets random weights and non-trivial BatchNorm statistics, its state_dict is
copied into minires' model (same keys, same shapes), and the two must agree on the logits in eval and in
train mode, on every BatchNorm's running statistics after a train-mode step, and on the gradients of every
parameter and of the input. Covered: torchvision's resnet18/34/50 (ImageNet and CIFAR stems) and He et
al.'s CIFAR resnet20/56, each residual, plain (no skip) and pre-activation.

PyTorch is a test-only oracle; minires never imports it. CI installs it (see .ci/run).
"""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
from minires import models

torch = pytest.importorskip("torch")
import torch_resnet  # noqa: E402  (tests/torch_resnet.py needs torch)


def copy_weights(tmodel, mmodel) -> None:
    """What a user does: export the state_dict with numpy, load it into minires; no key left over."""
    state = {k: v.detach().cpu().numpy() for k, v in tmodel.state_dict().items()}
    assert list(mmodel.state_dict()) == list(state)
    result = mmodel.load_state_dict(state)
    assert not result.missing_keys and not result.unexpected_keys


def compare(tmodel, mmodel, size: int, batch: int = 2, classes: int = 10) -> None:
    tmodel = tmodel.double()
    torch_resnet.randomize_batchnorm(tmodel)
    mmodel = mmodel.double()
    copy_weights(tmodel, mmodel)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((batch, 3, size, size))
    g = rng.standard_normal((batch, classes))

    # eval: running statistics, no update
    tmodel.eval()
    mmodel.eval()
    with torch.no_grad():
        expected = tmodel(torch.from_numpy(x)).numpy()
    with mr.no_grad():
        got = mmodel(mr.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())

    # train: batch statistics, running statistics updated, gradients of every parameter and the input
    tmodel.train()
    mmodel.train()
    tx = torch.from_numpy(x).requires_grad_()
    mx = mr.tensor(x, requires_grad=True)
    tout = tmodel(tx)
    mout = mmodel(mx)
    expected = tout.detach().numpy()
    np.testing.assert_allclose(mout.detach().numpy(), expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
    (tout * torch.from_numpy(g)).sum().backward()
    (mout * mr.tensor(g)).sum().backward()
    tgrads = {k: p.grad.numpy() for k, p in tmodel.named_parameters()}
    mgrads = {k: p.grad.numpy() for k, p in mmodel.named_parameters()}
    assert list(mgrads) == list(tgrads)
    for k in tgrads:
        np.testing.assert_allclose(mgrads[k], tgrads[k], rtol=1e-7, atol=1e-9 * np.abs(tgrads[k]).max(), err_msg=k)
    np.testing.assert_allclose(mx.grad.numpy(), tx.grad.numpy(), rtol=1e-7, atol=1e-9 * np.abs(tx.grad.numpy()).max())
    tstate, mstate = tmodel.state_dict(), mmodel.state_dict()
    buffers = [k for k in tstate if "running_" in k or "num_batches_tracked" in k]
    assert buffers
    for k in buffers:
        np.testing.assert_allclose(np.asarray(mstate[k].numpy(), dtype=np.float64), tstate[k].numpy().astype(np.float64),
                                   rtol=1e-9, atol=1e-12, err_msg=k)


VARIANTS = {"residual": {}, "plain": {"plain": True}, "preact": {"preact": True}}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("depth", [20, 56])
def test_cifar_resnets_match_pytorch(depth: int, variant: str) -> None:
    kwargs = VARIANTS[variant]
    compare(torch_resnet.CifarResNet(depth, **kwargs), getattr(models, f"resnet{depth}")(**kwargs), size=8, batch=3)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_torchvision_nets_match_pytorch(name: str) -> None:
    """The ImageNet stem (7x7/2 conv, 3x3/2 max pool) at the smallest size it takes, 32x32. The last stage is
    1x1 there, so a batch of 4 gives its BatchNorms 4 values a channel (2 would make them ill-conditioned)."""
    compare(torch_resnet.torchvision_style(name), getattr(models, name)(num_classes=10), size=32, batch=4)


@pytest.mark.parametrize("variant", ["plain", "preact"])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_variants_with_cifar_stem_match_pytorch(name: str, variant: str) -> None:
    kwargs = VARIANTS[variant]
    tmodel = torch_resnet.torchvision_style(name, stem="cifar", **kwargs)
    # 16x16: layer4 is 2x2, so with a batch of 4 its BatchNorms see 16 values a channel (a 1x1 last stage leaves
    # the 50-layer plain net, whose gradients grow to ~1e6, too ill-conditioned to compare at these tolerances)
    compare(tmodel, getattr(models, name)(num_classes=10, stem="cifar", **kwargs), size=16, batch=4)
