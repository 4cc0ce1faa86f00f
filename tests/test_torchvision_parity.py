"""Weights exported from torchvision with numpy load into minires and give the same logits.

Runs only where torch and torchvision are installed (they are not dependencies of minires). The export is
exactly what a user would do: ``np.savez(path, **{k: v.numpy() for k, v in model.state_dict().items()})``,
then ``model.load_state_dict(mr.load(path))``.
"""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
from minires import models

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def export(tv_model, path) -> None:
    np.savez(path, **{k: v.detach().cpu().numpy() for k, v in tv_model.state_dict().items()})


def randomize_torch_batchnorm(tv_model, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters, so eval-mode parity checks them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in tv_model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)


def compare(tv_model, mr_model, tmp_path, size: int, train: bool) -> None:
    torch.manual_seed(0)
    randomize_torch_batchnorm(tv_model)
    path = tmp_path / "weights.npz"
    export(tv_model, path)
    result = mr_model.load_state_dict(mr.load(path))
    assert not getattr(result, "missing_keys", []) and not getattr(result, "unexpected_keys", [])
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    tv_model.train(train)
    mr_model.train(train)
    with torch.no_grad():
        expected = tv_model(torch.from_numpy(x)).numpy()
    with mr.no_grad():
        got = mr_model(mr.tensor(x)).numpy()
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * scale)
    if train:  # running statistics updated the same way (momentum 0.1, unbiased variance)
        np.testing.assert_allclose(mr_model.bn1.running_var.numpy(), tv_model.bn1.running_var.numpy(), rtol=1e-4, atol=1e-5)
        assert int(mr_model.bn1.num_batches_tracked.item()) == 8


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_torchvision_weights_give_same_logits(name: str, train: bool, tmp_path) -> None:
    tv_model = getattr(torchvision.models, name)(weights=None)
    compare(tv_model, getattr(models, name)(), tmp_path, size=64, train=train)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_parameter_gradients_match_torch_autograd(name: str, tmp_path) -> None:
    """Backward through the whole net in train mode: every parameter's gradient matches torch's."""
    tv_model = getattr(torchvision.models, name)(weights=None, num_classes=10).double().train()
    randomize_torch_batchnorm(tv_model)
    path = tmp_path / "weights.npz"
    export(tv_model, path)
    mr_model = getattr(models, name)(num_classes=10).double().train()
    mr_model.load_state_dict(mr.load(path))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 64, 64))
    g = rng.standard_normal((2, 10))
    (tv_model(torch.from_numpy(x)) * torch.from_numpy(g)).sum().backward()
    (mr_model(mr.tensor(x, dtype=mr.float64)) * mr.tensor(g, dtype=mr.float64)).sum().backward()
    tv_grads = {k: p.grad.numpy() for k, p in tv_model.named_parameters()}
    mr_grads = {k: p.grad.numpy() for k, p in mr_model.named_parameters()}
    assert list(mr_grads) == list(tv_grads)
    for k in tv_grads:
        np.testing.assert_allclose(mr_grads[k], tv_grads[k], rtol=1e-7, atol=1e-9 * np.abs(tv_grads[k]).max(), err_msg=k)


def test_cifar_stem_matches_modified_torchvision(tmp_path) -> None:
    """torchvision's resnet18 with the usual CIFAR surgery (3x3 stride-1 conv1, no max pool)."""
    tv_model = torchvision.models.resnet18(weights=None, num_classes=10)
    tv_model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    tv_model.maxpool = torch.nn.Identity()
    compare(tv_model, models.resnet18(num_classes=10, stem="cifar"), tmp_path, size=32, train=False)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_same_keys_shapes_and_counts(name: str) -> None:
    tv_sd = getattr(torchvision.models, name)(weights=None).state_dict()
    mr_sd = getattr(models, name)().state_dict()
    assert list(mr_sd) == list(tv_sd)
    assert all(tuple(mr_sd[k].shape) == tuple(tv_sd[k].shape) for k in tv_sd)
