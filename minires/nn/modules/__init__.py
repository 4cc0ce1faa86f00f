"""The layers of :mod:`minires.nn`, one file per family."""

from minires.nn.modules.activation import LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from minires.nn.modules.batchnorm import BatchNorm1d, BatchNorm2d
from minires.nn.modules.container import ModuleDict, ModuleList, Sequential
from minires.nn.modules.conv import Conv2d
from minires.nn.modules.dropout import Dropout
from minires.nn.modules.linear import Linear
from minires.nn.modules.loss import CrossEntropyLoss, MSELoss, NLLLoss
from minires.nn.modules.misc import Flatten, Identity
from minires.nn.modules.module import Module
from minires.nn.modules.normalization import GroupNorm, LayerNorm
from minires.nn.modules.pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d
from minires.nn.modules.state_dict import IncompatibleKeys
from minires.tensor import RemovableHandle

__all__ = [
    "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d",
    "CrossEntropyLoss", "Dropout", "Flatten", "GroupNorm", "Identity", "IncompatibleKeys", "LayerNorm",
    "LeakyReLU", "Linear", "LogSoftmax", "MaxPool2d", "Module", "ModuleDict", "ModuleList", "MSELoss",
    "NLLLoss", "ReLU", "RemovableHandle", "Sequential", "Sigmoid", "Softmax", "Tanh",
]
