"""An independent PyTorch implementation of the ResNets, used only as a test oracle.

torchvision cannot be installed beside the CPU torch the tests use, so its ResNet is written out here from
torchvision's ``models/resnet.py`` (same attribute names, hence the same state_dict keys): ``BasicBlock``,
``Bottleneck`` (stride on the 3x3 conv, "v1.5"), the stem, ``_make_layer`` with a conv1x1 + BN projection.
Beside it, He et al.'s CIFAR nets (2015, section 4.2) with the parameter-free option-A shortcut, and the
pre-activation blocks of He et al. (2016) (BN-ReLU-conv, projection on the pre-activated input, a final BN +
ReLU after the last block). ``plain=True`` removes every skip connection (and the projections, which
nothing then uses). Nothing here imports minires.
"""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, plain: bool = False):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.plain = plain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if not self.plain:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, plain: bool = False):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.plain = plain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if not self.plain:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class PreActBasicBlock(nn.Module):
    """x + conv2(relu(bn2(conv1(relu(bn1(x)))))); a projection reads relu(bn1(x))."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, plain: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = downsample
        self.plain = plain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(pre))))
        if self.plain:
            return out
        return out + (x if self.downsample is None else self.downsample(pre))


class PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, plain: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * 4)
        self.downsample = downsample
        self.plain = plain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        if self.plain:
            return out
        return out + (x if self.downsample is None else self.downsample(pre))


class OptionA(nn.Module):
    """Every stride-th pixel, then zero channels appended after the real ones."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = out_planes - in_planes, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        zeros = x.new_zeros((x.shape[0], self.extra, x.shape[2], x.shape[3]))
        return torch.cat([x, zeros], dim=1)


class ResNet(nn.Module):
    """torchvision's ResNet (its ``_make_layer``), with a cifar stem, plain and pre-activation options."""

    def __init__(self, block: type, layers: list[int], num_classes: int = 10, stem: str = "imagenet", plain: bool = False):
        super().__init__()
        self.preact = block in (PreActBasicBlock, PreActBottleneck)
        self.plain = plain
        self.inplanes = 64
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(3, 64)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        if self.preact:
            self.final_bn = nn.BatchNorm2d(512 * block.expansion)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if not self.plain and (stride != 1 or self.inplanes != planes * block.expansion):
            conv = conv1x1(self.inplanes, planes * block.expansion, stride)
            downsample = nn.Sequential(conv) if self.preact else nn.Sequential(conv, nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, plain=self.plain)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, plain=self.plain) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.preact:
            x = self.relu(self.final_bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet of depth 6n + 2: 16/32/64 channels, option-A shortcuts."""

    def __init__(self, depth: int, num_classes: int = 10, plain: bool = False, preact: bool = False) -> None:
        super().__init__()
        n = (depth - 2) // 6
        block = PreActBasicBlock if preact else BasicBlock
        self.preact = preact
        self.conv1 = conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        stages, inplanes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            shortcut = OptionA(inplanes, planes, stride) if stride != 1 or inplanes != planes else None
            blocks = [block(inplanes, planes, stride, shortcut, plain=plain)]
            blocks += [block(planes, planes, plain=plain) for _ in range(1, n)]
            stages.append(nn.Sequential(*blocks))
            inplanes = planes
        self.layer1, self.layer2, self.layer3 = stages
        if preact:
            self.final_bn = nn.BatchNorm2d(64)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.preact:
            x = self.relu(self.final_bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


TORCHVISION_LAYOUTS = {
    "resnet18": (BasicBlock, PreActBasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, PreActBasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, PreActBottleneck, [3, 4, 6, 3]),
}


def torchvision_style(name: str, num_classes: int = 10, stem: str = "imagenet", plain: bool = False, preact: bool = False) -> ResNet:
    block, preact_block, layers = TORCHVISION_LAYOUTS[name]
    return ResNet(preact_block if preact else block, layers, num_classes, stem, plain)


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN affine parameters and running statistics, so eval mode and the updates check them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g, dtype=m.weight.dtype) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g, dtype=m.bias.dtype) - 0.5)
                m.running_mean.copy_(torch.rand(c, generator=g, dtype=m.running_mean.dtype) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g, dtype=m.running_var.dtype) + 0.5)
                m.num_batches_tracked.fill_(7)
