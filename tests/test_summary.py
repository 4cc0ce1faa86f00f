"""``summary``: per-layer output shapes, parameters and MACs, checked against hand arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

import minires.nn as nn
from minires import models
from minires.models import ModelSummary, summary


def conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def expected_torchvision_macs(layers: list[int], bottleneck: bool, size: int, stem: str = "imagenet",
                              num_classes: int = 1000) -> int:
    """Conv + fc multiply-accumulates of a torchvision-layout ResNet for one image, by hand."""
    if stem == "imagenet":
        s = conv_out(size, 7, 2, 3)
        macs = 64 * s * s * 3 * 7 * 7
        s = conv_out(s, 3, 2, 1)
    else:
        s = size
        macs = 64 * s * s * 3 * 3 * 3
    inplanes, expansion = 64, (4 if bottleneck else 1)
    for stage, depth in enumerate(layers):
        planes = 64 * 2**stage
        for b in range(depth):
            stride = 2 if (stage > 0 and b == 0) else 1
            o = conv_out(s, 3, stride, 1)
            if bottleneck:
                macs += planes * s * s * inplanes + planes * o * o * planes * 9 + planes * 4 * o * o * planes
            else:
                macs += planes * o * o * inplanes * 9 + planes * o * o * planes * 9
            if b == 0 and (stride != 1 or inplanes != planes * expansion):
                macs += planes * expansion * o * o * inplanes
            inplanes, s = planes * expansion, o
    return macs + inplanes * num_classes


def test_resnet18_224_totals_and_first_rows() -> None:
    result = summary(models.resnet18(), (1, 3, 224, 224), verbose=False)
    assert isinstance(result, ModelSummary)
    assert result.total_params == result.trainable_params == 11_689_512
    assert result.total_macs == expected_torchvision_macs([2, 2, 2, 2], False, 224)
    assert abs(result.total_macs / 1e9 - 1.82) < 0.01  # the familiar "1.8 GMACs" of resnet18
    first = result.layers[0]
    assert (first.name, first.kind, first.output_shape, first.params) == ("conv1", "Conv2d", (1, 64, 112, 112), 9408)
    assert first.macs == 64 * 112 * 112 * 3 * 7 * 7
    assert [r.name for r in result.layers[1:4]] == ["bn1", "relu", "maxpool"]
    assert result.layers[3].output_shape == (1, 64, 56, 56)
    assert result.layers[-1].name == "fc" and result.layers[-1].macs == 512 * 1000
    # Parameters in the rows add up to the model's (every parameterised module runs exactly once).
    assert sum(r.params for r in result.layers) == result.total_params
    # Elementwise layers count zero MACs.
    assert all(r.macs == 0 for r in result.layers if r.kind in ("BatchNorm2d", "ReLU", "MaxPool2d", "ResidualAdd"))


def test_rows_follow_calls_and_show_the_residual_adds() -> None:
    result = summary(models.resnet18(), (2, 3, 64, 64), verbose=False)
    names = [r.name for r in result.layers]
    assert names.count("layer1.0.relu") == 2  # the block's ReLU runs twice, as in torchvision
    adds = [r for r in result.layers if r.kind == "ResidualAdd"]
    assert len(adds) == 8 and adds[0].name == "layer1.0.add"
    assert adds[-1].output_shape == (2, 512, 2, 2)
    ds = [r for r in result.layers if r.name == "layer2.0.downsample.0"][0]
    assert ds.output_shape == (2, 128, 8, 8) and ds.params == 64 * 128 and ds.macs == 2 * 128 * 8 * 8 * 64


@pytest.mark.parametrize(("name", "size"), [("resnet50", 64), ("resnet34", 32)])
def test_torchvision_macs_match_arithmetic(name: str, size: int) -> None:
    layers, bottleneck = {"resnet50": ([3, 4, 6, 3], True), "resnet34": ([3, 4, 6, 3], False)}[name]
    result = summary(getattr(models, name)(), (1, 3, size, size), verbose=False)
    assert result.total_macs == expected_torchvision_macs(layers, bottleneck, size)


def test_resnet18_cifar_stem_summary() -> None:
    result = summary(models.resnet18(num_classes=10, stem="cifar"), (1, 3, 32, 32), verbose=False)
    assert result.total_params == 11_173_962
    assert result.total_macs == expected_torchvision_macs([2, 2, 2, 2], False, 32, stem="cifar", num_classes=10)
    assert "maxpool" in [r.name for r in result.layers]  # an nn.Identity row


def test_resnet20_summary() -> None:
    result = summary(models.resnet20(), (1, 3, 32, 32), verbose=False)
    assert result.total_params == 269_722
    # conv1 16*32*32*27; stage 1: six 16->16 convs at 32x32; stages 2 and 3: one half-width conv and five
    # full ones each at 16x16 / 8x8 (2,359,296 MACs per full conv at every stage); fc 64*10.
    assert result.total_macs == 442_368 + 6 * 2_359_296 + 2 * (1_179_648 + 5 * 2_359_296) + 640 == 40_551_040
    shortcuts = [r for r in result.layers if r.kind == "OptionAShortcut"]
    assert [r.output_shape for r in shortcuts] == [(1, 32, 16, 16), (1, 64, 8, 8)]
    assert all(r.params == 0 and r.macs == 0 for r in shortcuts)


def test_plain_summary_has_no_adds() -> None:
    result = summary(models.resnet20(plain=True), (1, 3, 32, 32), verbose=False)
    assert not any(r.kind == "ResidualAdd" for r in result.layers)
    assert result.total_params == 269_722


def test_table_text_and_printing(capsys) -> None:
    model = models.resnet20()
    result = summary(model, (1, 3, 32, 32))
    printed = capsys.readouterr().out
    assert printed.strip() == str(result).strip()
    assert "Total params:      269,722" in printed
    assert "Total MACs:        40,551,040" in printed
    assert "layer3.2.conv2" in printed and "(1, 64, 8, 8)" in printed
    header = [line for line in printed.splitlines() if line.startswith("Layer")][0]
    assert header.split() == ["Layer", "Type", "Output", "shape", "Params", "MACs"]


def test_mode_and_frozen_parameters() -> None:
    model = models.resnet20()
    model.train()
    model.layer1[0].eval()
    model.fc.weight.requires_grad_(False)
    result = summary(model, (1, 3, 32, 32), verbose=False)
    assert model.training and not model.layer1[0].training and model.layer2[0].training
    assert result.trainable_params == 269_722 - 640


def test_generic_module() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, groups=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    result = summary(net, (2, 3, 4, 4), verbose=False)
    assert [r.name for r in result.layers] == ["0", "1", "2", "3"]
    assert result.layers[0].macs == 2 * 8 * 4 * 4 * 3 * 9
    assert result.layers[3].macs == 2 * 5 * 128
    assert result.total_params == 8 * 27 + 8 + 128 * 5 + 5
    grouped = summary(nn.Conv2d(4, 8, 3, groups=2), (1, 4, 5, 5), verbose=False)
    assert grouped.total_macs == 8 * 3 * 3 * (4 // 2) * 9 and np.prod(grouped.layers[0].output_shape) == 72
