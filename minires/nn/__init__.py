"""``minires.nn``: Module, Parameter and the layers, with PyTorch's names and state_dict keys.

``minires.nn.functional`` holds the stateless ops, ``minires.nn.init`` the initialisers;
``minires.nn.utils`` (gradient clipping) is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from minires.nn import functional, init
from minires.nn.modules import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    GroupNorm,
    Identity,
    IncompatibleKeys,
    LayerNorm,
    LeakyReLU,
    Linear,
    LogSoftmax,
    MaxPool2d,
    Module,
    ModuleDict,
    ModuleList,
    MSELoss,
    NLLLoss,
    ReLU,
    RemovableHandle,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
)
from minires.nn.parameter import Parameter


def __getattr__(name: str) -> Any:
    """``nn.utils`` loads lazily, so ``minires.nn`` imports even where that module is absent."""
    if name == "utils":
        return importlib.import_module("minires.nn.utils")
    raise AttributeError(f"module 'minires.nn' has no attribute {name!r}")


__all__ = [
    "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d",
    "CrossEntropyLoss", "Dropout", "Flatten", "functional", "GroupNorm", "Identity", "IncompatibleKeys",
    "init", "LayerNorm", "LeakyReLU", "Linear", "LogSoftmax", "MaxPool2d", "Module", "ModuleDict",
    "ModuleList", "MSELoss", "NLLLoss", "Parameter", "ReLU", "RemovableHandle", "Sequential", "Sigmoid",
    "Softmax", "Tanh",
]
