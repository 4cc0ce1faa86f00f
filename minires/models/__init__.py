"""ResNets for minires: residual blocks, the torchvision family (resnet18..152), He et al.'s CIFAR nets
(resnet20..110) with their plain twins and pre-activation variants, ``summary`` to count them, and
``load_cifar_resnet_checkpoint`` for trained CIFAR ResNets saved by PyTorch (or minires).

Two model families share names that differ only in depth: ``resnet18/34/50/101/152`` are torchvision's
(four stages, 64-512 channels), ``resnet20/32/44/56/110`` are the 2015 paper's CIFAR nets (three stages,
16-64 channels).
"""

from minires.models.blocks import (
    BasicBlock,
    Bottleneck,
    OptionAShortcut,
    PreActBasicBlock,
    PreActBottleneck,
    ResidualAdd,
    conv1x1,
    conv3x3,
    projection_shortcut,
)
from minires.models.cifar_resnet import CIFAR_DEPTHS, CifarResNet, resnet20, resnet32, resnet44, resnet56, resnet110
from minires.models.pretrained import CHECKPOINT_MEAN, CHECKPOINT_STD, cifar_state_dict, load_cifar_resnet_checkpoint
from minires.models.resnet import ResNet, resnet18, resnet34, resnet50, resnet101, resnet152
from minires.models.summary import LayerSummary, ModelSummary, summary

__all__ = [
    "CHECKPOINT_MEAN",
    "CHECKPOINT_STD",
    "CIFAR_DEPTHS",
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "LayerSummary",
    "ModelSummary",
    "OptionAShortcut",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ResNet",
    "ResidualAdd",
    "cifar_state_dict",
    "conv1x1",
    "conv3x3",
    "load_cifar_resnet_checkpoint",
    "projection_shortcut",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet56",
    "resnet101",
    "resnet110",
    "resnet152",
    "summary",
]
