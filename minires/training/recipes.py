"""Defaults per data set — the recipe each ``--dataset`` starts from — and model construction by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from minires import models
from minires.models import MODEL_NAMES, TORCHVISION_NAMES
from minires.nn import Module

__all__ = ["MODEL_NAMES", "RECIPES", "Recipe", "build_model"]


@dataclass(frozen=True)
class Recipe:
    """The defaults of one data set; every field can be overridden on the command line."""

    model: str
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    schedule: str
    weight_decay: float
    warmup_epochs: float
    crop_padding: int
    flip: bool


RECIPES: dict[str, Recipe] = {
    # 1,437 training images of 8x8: a ResNet-20 (three stages at 8x8, 4x4, 2x2) trains in about a minute on 2 cores.
    "digits": Recipe("resnet20", 15, 64, 0.1, "sgd", "cosine", 5e-4, 1.0, crop_padding=1, flip=False),
    # He et al.'s CIFAR recipe, shortened; see README for the measured figures.
    "cifar10": Recipe("resnet20", 30, 128, 0.1, "sgd", "cosine", 5e-4, 1.0, crop_padding=4, flip=True),
    "cifar100": Recipe("resnet20", 30, 128, 0.1, "sgd", "cosine", 5e-4, 1.0, crop_padding=4, flip=True),
}


def build_model(name: str, num_classes: int, in_channels: int, image_size: int, plain: bool = False, preact: bool = False) -> Module:
    """A model from minires.models by name, adapted to the data: classes, input channels, and for the
    torchvision-style nets the CIFAR stem (3x3, no max pool) on images smaller than 64 pixels."""
    if name not in MODEL_NAMES:
        raise ValueError(f"--model: unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    kwargs: dict[str, Any] = {"num_classes": num_classes, "plain": plain, "preact": preact, "in_channels": in_channels}
    if name in TORCHVISION_NAMES:
        kwargs["stem"] = "cifar" if image_size < 64 else "imagenet"
    return getattr(models, name)(**kwargs)
