"""Published-style PyTorch CIFAR-ResNet checkpoints load into minires with PyTorch's logits.

The PyTorch side is a re-implementation (written here, with torch.nn) of the widely copied CIFAR-ResNet
code, akamaster/pytorch_resnet_cifar10: ``conv1, bn1, layer1..3, linear``, BasicBlocks whose option-A
shortcut is ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))`` (zero channels on both
sides), saved as that code saves it -- ``{"state_dict": DataParallel(net).state_dict(), "best_prec1": ...}``
in the legacy ``torch.save`` format. Random weights and BatchNorm statistics, float64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import minires as mr
from minires.models import CHECKPOINT_MEAN, CHECKPOINT_STD, CifarResNet, load_cifar_resnet_checkpoint

torch = pytest.importorskip("torch")
tnn, tfn = torch.nn, torch.nn.functional


class TorchBasicBlock(tnn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = tnn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.option_a = stride != 1 or in_planes != planes
        self.planes = planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if not self.option_a:
            return x
        return tfn.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.planes // 4, self.planes // 4), "constant", 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = tfn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return tfn.relu(out + self.shortcut(x))


class TorchCifarResNet(tnn.Module):
    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.in_planes = 16
        self.conv1 = tnn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = tnn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, n, 1)
        self.layer2 = self._make_layer(32, n, 2)
        self.layer3 = self._make_layer(64, n, 2)
        self.linear = tnn.Linear(64, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> tnn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(TorchBasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return tnn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = tfn.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = tfn.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


def random_net(depth: int, num_classes: int = 10, seed: int = 0) -> TorchCifarResNet:
    torch.manual_seed(seed)
    net = TorchCifarResNet(depth, num_classes).double()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (tnn.Conv2d, tnn.Linear)):
                tnn.init.kaiming_normal_(m.weight)
            if isinstance(m, tnn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7800)
    return net


def save_like_akamaster(net: TorchCifarResNet, path: Path) -> Path:
    torch.save({"state_dict": tnn.DataParallel(net).state_dict(), "best_prec1": 93.39}, path, _use_new_zipfile_serialization=False)
    return path


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("depth", [20, 56])
def test_legacy_checkpoint_gives_pytorch_logits(tmp_path: Path, depth: int) -> None:
    net = random_net(depth)
    path = save_like_akamaster(net, tmp_path / f"resnet{depth}.th")
    assert all(k.startswith("module.") for k in mr.load_torch(path)["state_dict"])  # saved as that code saves it
    model = load_cifar_resnet_checkpoint(path, f"resnet{depth}")
    assert isinstance(model, CifarResNet) and model.depth == depth and model.shortcut_padding == "split"
    assert model.conv1.weight.dtype == np.float64

    size = 32 if depth == 20 else 16  # ResNet-56 on 16x16 keeps the test quick; every stage still runs
    x = np.random.default_rng(depth).normal(size=(3, 3, size, size))
    net.eval()
    model.eval()
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    with mr.no_grad():
        got = model(mr.tensor(x, dtype=mr.float64)).numpy()
    assert relative_error(got, expected) < 1e-10

    # Training mode: BatchNorm uses the batch's statistics in both.
    net.train()
    model.train()
    with torch.no_grad():
        expected_train = net(torch.from_numpy(x)).numpy()
    got_train = model(mr.tensor(x, dtype=mr.float64)).numpy()
    assert relative_error(got_train, expected_train) < 1e-10
    assert relative_error(model.bn1.running_mean.numpy(), net.bn1.running_mean.numpy()) < 1e-12


def test_padding_matters(tmp_path: Path) -> None:
    """The same weights with option A's zeros at the end (minires' default) give other logits."""
    net = random_net(20).eval()
    path = save_like_akamaster(net, tmp_path / "resnet20.th")
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32))
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    end = load_cifar_resnet_checkpoint(path, shortcut_padding="end").eval()
    with mr.no_grad():
        assert relative_error(end(mr.tensor(x, dtype=mr.float64)).numpy(), expected) > 1e-3


def test_zip_checkpoint_and_loaded_dict_and_float32(tmp_path: Path) -> None:
    """A float32 net saved by today's torch.save (zip format, no DataParallel) and the dict load_torch returns."""
    net = random_net(20, num_classes=100, seed=3).float().eval()
    path = tmp_path / "r20.pt"
    torch.save(net.state_dict(), path)
    x = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    for source in (path, mr.load_torch(path)):
        model = load_cifar_resnet_checkpoint(source).eval()
        assert model.fc.weight.shape == (100, 64) and model.conv1.weight.dtype == np.float32
        with mr.no_grad():
            assert relative_error(model(mr.tensor(x)).numpy(), expected) < 1e-5


def test_wrong_arch_is_refused(tmp_path: Path) -> None:
    path = save_like_akamaster(random_net(20), tmp_path / "resnet20.th")
    with pytest.raises(ValueError, match="holds a ResNet-20 .3 blocks per stage., not resnet56"):
        load_cifar_resnet_checkpoint(path, "resnet56")
    torch.save({"state_dict": {"module.features.0.weight": torch.ones(2)}}, tmp_path / "other.th")
    with pytest.raises(ValueError, match="no layer1"):
        load_cifar_resnet_checkpoint(tmp_path / "other.th")


def test_minires_eval_on_a_pytorch_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``minires-eval --checkpoint FILE.th --model resnet20`` reports the accuracy PyTorch gets on the same images."""
    from test_cifar import make_cifar10

    from minires.data import get_dataset
    from minires.training.cli import eval_main

    folder, _ = make_cifar10(tmp_path)
    net = random_net(20, seed=5).eval()
    path = save_like_akamaster(net, tmp_path / "resnet20.th")
    test_set = get_dataset("cifar10", str(folder), train=False)
    images, labels = test_set.get_batch(np.arange(len(test_set)))
    images = (images.astype(np.float64) - np.array(CHECKPOINT_MEAN)[:, None, None]) / np.array(CHECKPOINT_STD)[:, None, None]
    with torch.no_grad():
        predicted = net(torch.from_numpy(images)).argmax(1).numpy()
    correct = int((predicted == labels).sum())

    assert eval_main(["--checkpoint", str(path), "--model", "resnet20", "--data-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"({correct}/{len(labels)})" in out and "split option-A padding" in out

    assert eval_main(["--checkpoint", str(path), "--model", "resnet56", "--data-dir", str(folder)]) == 2
    assert "not resnet56" in capsys.readouterr().err
    assert eval_main(["--checkpoint", str(path)]) == 2
    assert "--data-dir" in capsys.readouterr().err
