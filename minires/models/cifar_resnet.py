"""He et al. (2015)'s CIFAR-10 ResNets: resnet20/32/44/56/110 (section 4.2 of "Deep Residual Learning").

A 3x3 conv with 16 filters, then three stages of ``n`` BasicBlocks with 16, 32 and 64 channels on 32x32,
16x16 and 8x8 grids, global average pooling and a linear classifier: ``6n + 2`` weighted layers
(n = 3, 5, 7, 9, 18 gives depth 20, 32, 44, 56, 110). Where a stage halves the grid and doubles the
channels, the shortcut is the paper's parameter-free "option A" (:class:`OptionAShortcut`: take every
second pixel, append zero channels), so the residual nets and their ``plain=True`` twins have exactly the
same parameters -- the comparison behind the paper's degradation figure.

``shortcut_padding`` says where option A's zero channels go: ``"end"`` (default, as in the authors' Torch
code) or ``"split"`` (half on each side, as in the common PyTorch CIFAR-ResNet code whose published
checkpoints :func:`minires.models.load_cifar_resnet_checkpoint` reads).

``preact=True`` uses the pre-activation blocks of He et al. (2016) (BN-ReLU-conv, nothing after the add)
with the same option-A shortcuts, plus the extra ``final_bn`` + ReLU before the pool.
"""

from __future__ import annotations

import minires.nn as nn
from minires.models.blocks import BasicBlock, OptionAShortcut, PreActBasicBlock, norm_relu
from minires.models.resnet import ResNetBase, check_image_input, init_resnet_weights
from minires.tensor import Tensor

CIFAR_DEPTHS = (20, 32, 44, 56, 110)


class CifarResNet(ResNetBase):
    """He et al.'s CIFAR ResNet of ``depth = 6n + 2`` layers: ``(N, 3, H, W) -> (N, num_classes)``.

    Attribute names mirror torchvision's where they can (``conv1``, ``bn1``, ``relu``, ``layer1``..``layer3``,
    ``avgpool``, ``fc``). ``plain=True`` removes the skip connections (same parameters); ``preact=True``
    uses pre-activation blocks; ``zero_init_residual`` starts every block as the identity;
    ``shortcut_padding`` ("end" or "split") places option A's zero channels (see :class:`OptionAShortcut`).
    """

    min_input_size = 4  # smallest H and W accepted: two stride-2 stages downsample by 4

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        plain: bool = False,
        preact: bool = False,
        zero_init_residual: bool = False,
        in_channels: int = 3,
        shortcut_padding: str = "end",
    ) -> None:
        super().__init__()
        if shortcut_padding not in OptionAShortcut.PADDINGS:
            raise ValueError(f"CifarResNet: shortcut_padding must be 'end' or 'split', got {shortcut_padding!r}")
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CifarResNet: depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth}")
        self.depth = depth
        self.blocks_per_stage = (depth - 2) // 6
        self.plain = plain
        self.preact = preact
        self.in_channels = in_channels
        self.shortcut_padding = shortcut_padding
        self.block = PreActBasicBlock if preact else BasicBlock
        self.inplanes = 16

        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(self.block, 16, self.blocks_per_stage, stride=1, plain=plain)
        self.layer2 = self._make_layer(self.block, 32, self.blocks_per_stage, stride=2, plain=plain)
        self.layer3 = self._make_layer(self.block, 64, self.blocks_per_stage, stride=2, plain=plain)
        if preact:
            self.final_bn = nn.BatchNorm2d(64)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        init_resnet_weights(self, zero_init_residual)

    def _downsample(self, inplanes: int, out_planes: int, stride: int) -> nn.Module | None:
        """The paper's parameter-free option A (subsample, append zero channels where ``shortcut_padding`` says)."""
        return OptionAShortcut(inplanes, out_planes, stride, padding=self.shortcut_padding)

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem and the three stages: ``(N, C, H, W) -> (N, 64, H / 4, W / 4)``."""
        check_image_input(f"CifarResNet-{self.depth}", x, self.in_channels, self.min_input_size, "its stages downsample by 4")
        x = norm_relu(self.bn1, self.relu, self.conv1(x))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        if self.preact:
            x = norm_relu(self.final_bn, self.relu, x)
        return x


def resnet20(
    num_classes: int = 10, plain: bool = False, preact: bool = False, zero_init_residual: bool = False, in_channels: int = 3,
    shortcut_padding: str = "end",
) -> CifarResNet:
    """ResNet-20 for CIFAR (n = 3): 269,722 parameters with 10 classes."""
    return CifarResNet(20, num_classes, plain=plain, preact=preact, zero_init_residual=zero_init_residual, in_channels=in_channels,
                       shortcut_padding=shortcut_padding)


def resnet32(
    num_classes: int = 10, plain: bool = False, preact: bool = False, zero_init_residual: bool = False, in_channels: int = 3,
    shortcut_padding: str = "end",
) -> CifarResNet:
    """ResNet-32 for CIFAR (n = 5): 464,154 parameters with 10 classes."""
    return CifarResNet(32, num_classes, plain=plain, preact=preact, zero_init_residual=zero_init_residual, in_channels=in_channels,
                       shortcut_padding=shortcut_padding)


def resnet44(
    num_classes: int = 10, plain: bool = False, preact: bool = False, zero_init_residual: bool = False, in_channels: int = 3,
    shortcut_padding: str = "end",
) -> CifarResNet:
    """ResNet-44 for CIFAR (n = 7): 658,586 parameters with 10 classes."""
    return CifarResNet(44, num_classes, plain=plain, preact=preact, zero_init_residual=zero_init_residual, in_channels=in_channels,
                       shortcut_padding=shortcut_padding)


def resnet56(
    num_classes: int = 10, plain: bool = False, preact: bool = False, zero_init_residual: bool = False, in_channels: int = 3,
    shortcut_padding: str = "end",
) -> CifarResNet:
    """ResNet-56 for CIFAR (n = 9): 853,018 parameters with 10 classes."""
    return CifarResNet(56, num_classes, plain=plain, preact=preact, zero_init_residual=zero_init_residual, in_channels=in_channels,
                       shortcut_padding=shortcut_padding)


def resnet110(
    num_classes: int = 10, plain: bool = False, preact: bool = False, zero_init_residual: bool = False, in_channels: int = 3,
    shortcut_padding: str = "end",
) -> CifarResNet:
    """ResNet-110 for CIFAR (n = 18): 1,727,962 parameters with 10 classes."""
    return CifarResNet(110, num_classes, plain=plain, preact=preact, zero_init_residual=zero_init_residual, in_channels=in_channels,
                       shortcut_padding=shortcut_padding)


__all__ = ["CIFAR_DEPTHS", "CifarResNet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
