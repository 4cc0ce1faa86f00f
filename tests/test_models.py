"""Structure of the ResNet family: parameter counts, torchvision state_dict keys, output shapes,
initialisation, plain / pre-activation variants, input errors, and save/load round trips."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import minires as mr
import minires.nn as nn
from minires import models
from minires.models import (
    BasicBlock,
    Bottleneck,
    CifarResNet,
    OptionAShortcut,
    PreActBasicBlock,
    PreActBottleneck,
    ResidualAdd,
    ResNet,
)

# (layers per stage, bottleneck?) of torchvision's ResNets
TORCHVISION_LAYOUT = {
    "resnet18": ([2, 2, 2, 2], False),
    "resnet34": ([3, 4, 6, 3], False),
    "resnet50": ([3, 4, 6, 3], True),
    "resnet101": ([3, 4, 23, 3], True),
    "resnet152": ([3, 8, 36, 3], True),
}
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.cache
def torchvision_model(name: str) -> ResNet:
    """Each big model is built once per test session (building resnet152 takes a moment)."""
    return getattr(models, name)()


# ----- independent arithmetic: parameters and state_dict keys from torchvision's documented layout ---------


def expected_param_count(layers: list[int], bottleneck: bool, num_classes: int = 1000, stem: str = "imagenet",
                         plain: bool = False) -> int:
    """Count parameters by hand: conv weights (no biases), BatchNorm weight + bias, fc weight + bias."""
    def bn(c: int) -> int:
        return 2 * c

    total = (7 * 7 if stem == "imagenet" else 3 * 3) * 3 * 64 + bn(64)
    inplanes, expansion = 64, (4 if bottleneck else 1)
    for stage, depth in enumerate(layers):
        planes = 64 * 2**stage
        for b in range(depth):
            if bottleneck:
                total += inplanes * planes + bn(planes) + 9 * planes * planes + bn(planes)
                total += planes * planes * 4 + bn(planes * 4)
            else:
                total += 9 * inplanes * planes + bn(planes) + 9 * planes * planes + bn(planes)
            if not plain and b == 0 and (stage > 0 or inplanes != planes * expansion):
                total += inplanes * planes * expansion + bn(planes * expansion)
            inplanes = planes * expansion
    return total + inplanes * num_classes + num_classes


def torchvision_state_dict_keys(layers: list[int], bottleneck: bool) -> list[str]:
    """torchvision's ResNet state_dict keys, in its order."""
    def bn(prefix: str) -> list[str]:
        return [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]

    keys = ["conv1.weight", *bn("bn1")]
    n_convs = 3 if bottleneck else 2
    for stage, depth in enumerate(layers, start=1):
        for b in range(depth):
            p = f"layer{stage}.{b}"
            for k in range(1, n_convs + 1):
                keys += [f"{p}.conv{k}.weight", *bn(f"{p}.bn{k}")]
            if b == 0 and (stage > 1 or bottleneck):
                keys += [f"{p}.downsample.0.weight", *bn(f"{p}.downsample.1")]
    return keys + ["fc.weight", "fc.bias"]


def test_expected_param_arithmetic_matches_torchvision_numbers() -> None:
    for name, (layers, bottleneck) in TORCHVISION_LAYOUT.items():
        assert expected_param_count(layers, bottleneck) == TORCHVISION_PARAMS[name]
    assert expected_param_count([2, 2, 2, 2], False, num_classes=10, stem="cifar") == 11_173_962


# ----- parameter counts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_torchvision_param_counts(name: str) -> None:
    assert n_params(torchvision_model(name)) == TORCHVISION_PARAMS[name]


def test_resnet18_cifar_stem_param_count() -> None:
    model = models.resnet18(num_classes=10, stem="cifar")
    assert n_params(model) == 11_173_962
    assert model.conv1.weight.shape == (64, 3, 3, 3)
    assert isinstance(model.maxpool, nn.Identity)


@pytest.mark.parametrize("depth", list(CIFAR_PARAMS))
def test_cifar_param_counts_and_plain_twins(depth: int) -> None:
    net = getattr(models, f"resnet{depth}")(num_classes=10)
    plain = getattr(models, f"resnet{depth}")(num_classes=10, plain=True)
    assert n_params(net) == CIFAR_PARAMS[depth]
    assert n_params(plain) == CIFAR_PARAMS[depth]  # option-A shortcuts have no parameters
    assert net.blocks_per_stage == (depth - 2) // 6
    assert [len(net.layer1), len(net.layer2), len(net.layer3)] == [(depth - 2) // 6] * 3
    assert [k for k in net.state_dict() if "downsample" in k] == []


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_plain_torchvision_nets_drop_projections(name: str) -> None:
    layers, bottleneck = TORCHVISION_LAYOUT[name]
    plain = getattr(models, name)(plain=True)
    assert n_params(plain) == expected_param_count(layers, bottleneck, plain=True)
    assert not any("downsample" in k for k in plain.state_dict())
    for block in plain.modules():
        if isinstance(block, (BasicBlock, Bottleneck)):
            assert block.add is None and block.downsample is None and block.plain


def test_plain_resnet18_count_is_documented() -> None:
    assert n_params(models.resnet18(plain=True)) == 11_515_688


# ----- state_dict keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TORCHVISION_LAYOUT))
def test_state_dict_keys_match_torchvision(name: str) -> None:
    layers, bottleneck = TORCHVISION_LAYOUT[name]
    assert list(torchvision_model(name).state_dict()) == torchvision_state_dict_keys(layers, bottleneck)


def test_cifar_stem_keeps_torchvision_keys() -> None:
    keys = list(models.resnet18(num_classes=10, stem="cifar").state_dict())
    assert keys == torchvision_state_dict_keys([2, 2, 2, 2], False)


def test_state_dict_shapes_follow_torchvision() -> None:
    sd = torchvision_model("resnet50").state_dict()
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["layer1.0.conv1.weight"].shape == (64, 64, 1, 1)
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # stride on the 3x3 (v1.5)
    assert torchvision_model("resnet50").layer2[0].conv2.stride in (2, (2, 2))
    assert torchvision_model("resnet50").layer2[0].conv1.stride in (1, (1, 1))
    assert sd["layer4.2.bn3.running_var"].shape == (2048,)
    assert sd["fc.weight"].shape == (1000, 2048)


# ----- forward shapes --------------------------------------------------------------------------------------


def stage_sizes(size: int, stem: str) -> list[int]:
    """Spatial size after the stem and each stage, by the convolution output formula."""
    def out(n: int, k: int, s: int, p: int) -> int:
        return (n + 2 * p - k) // s + 1

    n = out(out(size, 7, 2, 3), 3, 2, 1) if stem == "imagenet" else size
    sizes = [n]
    for _ in range(3):
        n = out(n, 3, 2, 1)
        sizes.append(n)
    return sizes


@pytest.mark.parametrize("name", list(TORCHVISION_LAYOUT))
@pytest.mark.parametrize("size", [32, 224])
def test_torchvision_forward_shapes(name: str, size: int) -> None:
    model = torchvision_model(name)  # shared with other tests: leave it in training mode, as built
    assert model.training
    widths = [64 * 2**i * (4 if TORCHVISION_LAYOUT[name][1] else 1) for i in range(4)]
    seen: dict[str, tuple[int, ...]] = {}
    handles = [getattr(model, f"layer{i}").register_forward_hook(
        lambda m, a, o, i=i: seen.__setitem__(f"layer{i}", o.shape)) for i in range(1, 5)]
    model.eval()  # a batch of one: BatchNorm needs the running statistics
    try:
        with mr.no_grad():
            out = model(mr.randn(1, 3, size, size))
    finally:
        model.train()
        for h in handles:
            h.remove()
    assert out.shape == (1, 1000)
    for i, (width, n) in enumerate(zip(widths, stage_sizes(size, "imagenet")), start=1):
        assert seen[f"layer{i}"] == (1, width, n, n)
    assert np.isfinite(out.numpy()).all()


@pytest.mark.parametrize("size", [32, 224])
def test_resnet18_cifar_stem_forward_shapes(size: int) -> None:
    model = models.resnet18(num_classes=10, stem="cifar").eval()
    with mr.no_grad():
        features = model.forward_features(mr.randn(1, 3, size, size))
        out = model.fc(model.avgpool(features).flatten(1))
    n = stage_sizes(size, "cifar")[-1]
    assert features.shape == (1, 512, n, n)
    assert out.shape == (1, 10)


@pytest.mark.parametrize("depth", list(CIFAR_PARAMS))
def test_cifar_forward_shapes_32(depth: int) -> None:
    model = getattr(models, f"resnet{depth}")().eval()
    with mr.no_grad():
        assert model.forward_features(mr.randn(2, 3, 32, 32)).shape == (2, 64, 8, 8)
        assert model(mr.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("depth", list(CIFAR_PARAMS))
def test_cifar_forward_shapes_224(depth: int) -> None:
    model = getattr(models, f"resnet{depth}")().eval()
    with mr.no_grad():
        assert model.forward_features(mr.randn(1, 3, 224, 224)).shape == (1, 64, 56, 56)


def test_variants_forward_shapes() -> None:
    x = mr.randn(2, 3, 32, 32)
    small = mr.randn(2, 3, 8, 8)
    for model in [
        models.resnet18(num_classes=10, stem="cifar", preact=True),
        models.resnet50(num_classes=7, stem="cifar", plain=True),
        models.resnet50(num_classes=7, preact=True),
        models.resnet20(preact=True),
        models.resnet20(plain=True, preact=True),
        models.resnet34(num_classes=5, plain=True),
    ]:
        with mr.no_grad():
            inp = small if getattr(model, "stem", "imagenet") == "cifar" else x
            assert model(inp).shape == (2, model.fc.out_features)


# ----- input errors ----------------------------------------------------------------------------------------


def test_too_small_input_for_imagenet_stem() -> None:
    model = models.resnet18()
    with pytest.raises(ValueError, match=r"8x8.*at least 32x32") as info:
        model(mr.randn(1, 3, 8, 8))
    assert "stem='cifar'" in str(info.value)
    with pytest.raises(ValueError, match=r"at least 8x8"):
        models.resnet18(stem="cifar")(mr.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"3x3.*at least 4x4"):
        models.resnet20()(mr.randn(1, 3, 3, 3))


def test_wrong_channels_and_rank() -> None:
    with pytest.raises(ValueError, match=r"1 channels, but conv1 expects 3"):
        models.resnet18()(mr.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match=r"1 channels, but conv1 expects 3"):
        models.resnet20()(mr.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        models.resnet20()(mr.randn(3, 32, 32))
    assert models.resnet20().in_channels == 3
    grey = models.ResNet(BasicBlock, [1, 1, 1, 1], num_classes=4, stem="cifar", in_channels=1)
    assert grey(mr.randn(2, 1, 8, 8)).shape == (2, 4)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="stem"):
        models.resnet18(stem="tiny")
    with pytest.raises(ValueError, match="6n"):
        CifarResNet(21)
    with pytest.raises(ValueError, match="groups"):
        BasicBlock(4, 4, groups=2)


# ----- initialisation ---------------------------------------------------------------------------------------


def test_torchvision_initialisation() -> None:
    model = models.resnet18()
    w = model.layer3[1].conv2.weight.numpy()  # (256, 256, 3, 3): fan_out = 256 * 9
    assert abs(w.std() - np.sqrt(2.0 / (256 * 9))) < 0.02 * np.sqrt(2.0 / (256 * 9))
    assert abs(w.mean()) < 1e-3
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert np.all(m.weight.numpy() == 1) and np.all(m.bias.numpy() == 0)
    assert np.all(model.layer1[0].bn2.weight.numpy() == 1)


@pytest.mark.parametrize("builder", [models.resnet18, models.resnet50, models.resnet20])
def test_zero_init_residual(builder) -> None:
    model = builder(zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert blocks
    for block in blocks:
        last = block.bn3 if isinstance(block, Bottleneck) else block.bn2
        assert np.all(last.weight.numpy() == 0)
        assert np.all(block.bn1.weight.numpy() == 1)


def test_zero_init_residual_makes_blocks_identity() -> None:
    """With the last BN scale at zero and its bias at zero, a block without projection is relu(x)."""
    block = BasicBlock(4, 4)
    block.zero_init_last()
    x = mr.randn(2, 4, 5, 5)
    np.testing.assert_array_equal(block(x).numpy(), np.maximum(x.numpy(), 0))
    pre = PreActBasicBlock(4, 4)
    pre.zero_init_last()
    np.testing.assert_array_equal(pre(x).numpy(), x.numpy())  # pre-activation: exactly the identity


# ----- blocks, the residual add and the option-A shortcut ------------------------------------------------


def test_block_attribute_names() -> None:
    b = Bottleneck(64, 64, downsample=models.projection_shortcut(64, 256, 1))
    names = [n for n, _ in b.named_children()]
    assert names[:6] == ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3"]
    assert {"relu", "downsample", "add"} <= set(names)
    assert isinstance(b.add, ResidualAdd) and isinstance(b.downsample, nn.Sequential)
    assert [n for n, _ in BasicBlock(8, 8).named_children()] == ["conv1", "bn1", "relu", "conv2", "bn2", "add"]


def test_forward_hook_on_residual_add_sees_both_paths() -> None:
    block = BasicBlock(3, 6, stride=2, downsample=models.projection_shortcut(3, 6, 2))
    seen = {}

    def hook(module, args, output):
        seen["branch"], seen["identity"] = args
        seen["sum"] = output

    block.add.register_forward_hook(hook)
    x = mr.randn(2, 3, 6, 6)
    y = block(x)
    assert seen["branch"].shape == seen["identity"].shape == (2, 6, 3, 3)
    np.testing.assert_array_equal(seen["sum"].numpy(), seen["branch"].numpy() + seen["identity"].numpy())
    np.testing.assert_array_equal(y.numpy(), np.maximum(seen["sum"].numpy(), 0))
    np.testing.assert_allclose(seen["branch"].numpy(), block.branch(x).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(seen["identity"].numpy(), block.shortcut(x).numpy(), rtol=1e-6, atol=1e-6)


def test_residual_add_shape_mismatch_error() -> None:
    with pytest.raises(ValueError, match="needs a downsample"):
        BasicBlock(4, 8)(mr.randn(1, 4, 4, 4))


def test_option_a_shortcut_values() -> None:
    x = mr.randn(2, 3, 5, 5)
    y = OptionAShortcut(3, 8, stride=2)(x).numpy()
    assert y.shape == (2, 8, 3, 3)
    np.testing.assert_array_equal(y[:, :3], x.numpy()[:, :, ::2, ::2])
    assert np.all(y[:, 3:] == 0)
    assert list(OptionAShortcut(3, 8).parameters()) == []
    with pytest.raises(ValueError, match="shrink"):
        OptionAShortcut(8, 4)


def test_cifar_net_uses_option_a() -> None:
    net = models.resnet20()
    assert isinstance(net.layer2[0].downsample, OptionAShortcut)
    assert net.layer1[0].downsample is None and net.layer2[1].downsample is None
    plain = models.resnet20(plain=True)
    assert all(getattr(m, "add", None) is None for m in plain.modules() if isinstance(m, BasicBlock))


def test_plain_block_forward_is_branch_then_relu() -> None:
    block = BasicBlock(4, 4, plain=True)
    x = mr.randn(2, 4, 4, 4)
    np.testing.assert_array_equal(block(x).numpy(), np.maximum(block.branch(x).numpy(), 0))


def test_preact_layout() -> None:
    model = models.resnet18(preact=True)
    assert isinstance(model.layer1[0], PreActBasicBlock)
    assert model.final_bn.num_features == 512
    assert model.layer2[0].bn1.num_features == 64  # BN sees the block's input
    assert model.layer2[0].downsample[0].weight.shape == (128, 64, 1, 1)
    assert len(model.layer2[0].downsample) == 1  # bare 1x1 conv
    assert isinstance(models.resnet50(preact=True).layer1[0], PreActBottleneck)
    assert models.resnet110(preact=True).final_bn.num_features == 64


def test_preact_block_is_identity_plus_branch() -> None:
    block = PreActBottleneck(8, 2)
    x = mr.randn(2, 8, 4, 4)
    np.testing.assert_allclose(block(x).numpy(), x.numpy() + block.branch(x).numpy(), rtol=1e-6, atol=1e-6)


# ----- weights round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("builder", [models.resnet20, functools.partial(models.resnet18, num_classes=10, stem="cifar")])
def test_save_load_round_trip(tmp_path, builder) -> None:
    a = builder()
    a.train()
    a(mr.randn(4, 3, 16, 16))  # move the running statistics away from their initial values
    a.eval()
    path = tmp_path / "weights.npz"
    mr.save(a.state_dict(), path)
    mr.manual_seed(123)
    b = builder().eval()
    b.load_state_dict(mr.load(path))
    x = mr.randn(2, 3, 16, 16)
    with mr.no_grad():
        np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    assert int(b.state_dict()["bn1.num_batches_tracked"].item()) == 1
