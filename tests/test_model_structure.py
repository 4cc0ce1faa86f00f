"""Model structure kept in one place: the model-name list, the shared _make_layer, and the pre-activation
shortcut that must not touch bn1's running statistics when run on its own."""

from __future__ import annotations

import re

import numpy as np
import pytest

import minires as mr
import minires.nn as nn
from minires import models
from minires.models import MODEL_NAMES, PreActBasicBlock, PreActBottleneck
from minires.training import recipes


def test_model_names_are_the_packages_constructors() -> None:
    exported = {n for n in models.__all__ if re.fullmatch(r"resnet\d+", n)}
    assert set(MODEL_NAMES) == exported and len(MODEL_NAMES) == len(exported)
    assert recipes.MODEL_NAMES is MODEL_NAMES
    for name in MODEL_NAMES:
        assert callable(getattr(models, name))
    assert set(models.TORCHVISION_NAMES) | set(models.CIFAR_NAMES) == set(MODEL_NAMES)


@pytest.mark.parametrize("name,blocks", [("resnet18", [2, 2, 2, 2]), ("resnet50", [3, 4, 6, 3]), ("resnet20", [3, 3, 3])])
def test_stages_have_the_documented_depths(name: str, blocks: list[int]) -> None:
    model = getattr(models, name)(num_classes=3)
    stages = [getattr(model, f"layer{i}") for i in range(1, len(blocks) + 1)]
    assert [len(s) for s in stages] == blocks
    # the first block of a stage that changes shape has a shortcut; the others keep the identity
    assert all(b.downsample is None for s in stages for b in list(s)[1:])
    assert all(s[0].downsample is not None for s in stages[1:])


def _bn_batch_stats(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("block_type", [PreActBasicBlock, PreActBottleneck])
def test_preact_shortcut_alone_leaves_bn1_statistics_alone(block_type) -> None:
    mr.manual_seed(0)
    out_planes = 8 * block_type.expansion
    downsample = nn.Sequential(nn.Conv2d(4, out_planes, 1, stride=2, bias=False))
    block = block_type(4, 8, stride=2, downsample=downsample).double()
    block.bn1.weight.data[...] = np.array([0.5, 1.5, -1.0, 2.0])
    block.bn1.bias.data[...] = np.array([0.1, -0.2, 0.3, 0.0])
    x = np.random.default_rng(0).standard_normal((3, 4, 6, 6)) * 2 + 1
    block.train()
    block(mr.tensor(x))  # forward updates bn1 once
    stats = [b.numpy().copy() for b in (block.bn1.running_mean, block.bn1.running_var, block.bn1.num_batches_tracked)]
    y = block.shortcut(mr.tensor(x))
    after = [b.numpy() for b in (block.bn1.running_mean, block.bn1.running_var, block.bn1.num_batches_tracked)]
    for a, b in zip(after, stats):
        np.testing.assert_array_equal(a, b)
    # ... and computes what forward's shortcut computes: the projection of relu(bn1(x)) with batch statistics
    pre = np.maximum(_bn_batch_stats(x, block.bn1.weight.numpy(), block.bn1.bias.numpy(), block.bn1.eps), 0)
    w = downsample[0].weight.numpy()[:, :, 0, 0]
    expected = np.einsum("oc,nchw->nohw", w, pre[:, :, ::2, ::2])
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-10, atol=1e-12)
    # in eval mode it normalises with the running statistics, as forward does
    block.eval()
    rm, rv = block.bn1.running_mean.numpy(), block.bn1.running_var.numpy()
    c = (1, -1, 1, 1)
    pre = (x - rm.reshape(c)) / np.sqrt(rv.reshape(c) + block.bn1.eps) * block.bn1.weight.numpy().reshape(c)
    pre = np.maximum(pre + block.bn1.bias.numpy().reshape(c), 0)
    np.testing.assert_allclose(block.shortcut(mr.tensor(x)).numpy(), np.einsum("oc,nchw->nohw", w, pre[:, :, ::2, ::2]), rtol=1e-10)
