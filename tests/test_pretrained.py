"""load_cifar_resnet_checkpoint on minires' own files (no PyTorch needed); PyTorch files: test_cifar_checkpoint.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import minires as mr
from minires.models import CifarResNet, load_cifar_resnet_checkpoint, resnet18
from minires.training.checkpoint import save_checkpoint
from minires.training.cli import eval_main


def randomised(model: CifarResNet, seed: int = 0) -> CifarResNet:
    rng = np.random.default_rng(seed)
    for _, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.dtype.kind == "f":
            t.data[...] = rng.uniform(0.5, 1.5, size=t.shape)
    return model


def same_weights(a: CifarResNet, b: CifarResNet) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in sa)


def test_saved_state_dict(tmp_path: Path) -> None:
    model = randomised(CifarResNet(14, num_classes=7, in_channels=1))
    mr.save(model.state_dict(), tmp_path / "w.npz")
    loaded = load_cifar_resnet_checkpoint(tmp_path / "w.npz")
    assert (loaded.depth, loaded.in_channels, loaded.shortcut_padding) == (14, 1, "end")
    assert loaded.fc.weight.shape == (7, 64) and not loaded.plain and not loaded.preact
    assert same_weights(loaded, model)


def test_training_checkpoint_keeps_plain_and_preact(tmp_path: Path) -> None:
    for plain, preact in ((True, False), (False, True)):
        model = randomised(CifarResNet(8, in_channels=1, plain=plain, preact=preact))
        path = tmp_path / f"ckpt-{plain}-{preact}.npz"
        save_checkpoint(path, model.state_dict(), config={"model": "resnet8", "plain": plain, "preact": preact}, epoch=3)
        loaded = load_cifar_resnet_checkpoint(path)
        assert (loaded.plain, loaded.preact) == (plain, preact)
        assert same_weights(loaded, model)
        x = mr.tensor(np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32))
        with mr.no_grad():
            assert np.array_equal(loaded.eval()(x).numpy(), model.eval()(x).numpy())


def test_refusals(tmp_path: Path) -> None:
    mr.save(resnet18(num_classes=10).state_dict(), tmp_path / "r18.npz")
    with pytest.raises(ValueError, match="torchvision-style ResNet"):
        load_cifar_resnet_checkpoint(tmp_path / "r18.npz")
    mr.save(CifarResNet(8).state_dict(), tmp_path / "r8.npz")
    with pytest.raises(ValueError, match=r"holds a ResNet-8 \(1 blocks per stage\), not resnet20"):
        load_cifar_resnet_checkpoint(tmp_path / "r8.npz", "resnet20")
    with pytest.raises(ValueError, match="arch should be a CIFAR ResNet name"):
        load_cifar_resnet_checkpoint(tmp_path / "r8.npz", "wide_resnet")
    with pytest.raises(FileNotFoundError):
        load_cifar_resnet_checkpoint(tmp_path / "nope.th")


def test_eval_model_flag_must_match_a_minires_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, CifarResNet(20, in_channels=1).state_dict(), config={"dataset": "digits", "model": "resnet20"}, epoch=1)
    assert eval_main(["--checkpoint", str(path), "--model", "resnet56"]) == 2
    assert "holds a resnet20" in capsys.readouterr().err
