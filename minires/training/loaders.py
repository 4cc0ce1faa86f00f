"""What a run reads its data through: the device check, the transforms and loaders, and the
model and test loader for evaluating a checkpoint."""

from __future__ import annotations

from typing import Any

from minires.backend import get_xp
from minires.data import DataLoader, get_dataset
from minires.data.transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip
from minires.nn import Module
from minires.training.config import TrainConfig
from minires.training.recipes import RECIPES, build_model


def make_transforms(config: TrainConfig, mean: Any, std: Any, size: int, train: bool) -> Compose:
    """The recipe's augmentation (training split, unless --no-augment) followed by normalisation."""
    recipe = RECIPES[config.dataset]
    steps: list[Any] = []
    if train and config.augment:
        if recipe.crop_padding:
            steps.append(RandomCrop(size, padding=recipe.crop_padding))
        if recipe.flip:
            steps.append(RandomHorizontalFlip())
    steps.append(Normalize(mean, std))
    return Compose(steps)


def check_device(device: str) -> None:
    """Fail early, with the install hint, when ``--device cuda`` has no CuPy or no GPU."""
    try:
        get_xp(device)
    except RuntimeError as exc:
        raise ValueError(f"--device {device}: {exc}") from None


def make_test_loader(config: TrainConfig, test_set: Any) -> DataLoader:
    """Batches of 500 test images, normalised with the statistics the data set carries (the training split's)."""
    size = test_set.image_shape[1]
    transform = make_transforms(config, test_set.mean, test_set.std, size, train=False)
    return DataLoader(test_set, 500, device=config.device, transform=transform, prefetch=config.prefetch)


def build_evaluation(config: TrainConfig) -> tuple[Module, Any, DataLoader]:
    """(model, test set, test loader) for evaluating a checkpoint: the training split is never loaded."""
    config = config.resolved()
    check_device(config.device)
    test_set = get_dataset(config.dataset, config.data_dir, train=False)
    channels, size, _ = test_set.image_shape
    model = build_model(config.model, test_set.num_classes, channels, size, config.plain, config.preact).to(config.device)
    return model, test_set, make_test_loader(config, test_set)
