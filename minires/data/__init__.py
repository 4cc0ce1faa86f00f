"""Data: datasets, the DataLoader and batch transforms.

- :func:`load_digits` — the embedded default (scikit-learn's 8x8 digits, no download).
- :func:`load_cifar10` / :func:`load_cifar100` — from a local copy of the official python version.
- :class:`DataLoader` — seeded, resumable batches on a device, prefetched by a background thread.
- :mod:`minires.data.transforms` — vectorised batch augmentation on raw arrays (numpy or cupy).
"""

from __future__ import annotations

import os

from minires.data import transforms
from minires.data.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFAR_URL,
    CifarFormatError,
    RestrictedUnpickler,
    UnsafePickleError,
    load_cifar10,
    load_cifar100,
)
from minires.data.dataset import ArrayDataset, Dataset, images_to_float
from minires.data.digits import digits_mean_std, load_digits
from minires.data.loader import DataLoader
from minires.data.transforms import Compose, Cutout, Normalize, RandomCrop, RandomHorizontalFlip, Transform

DATASETS = ("digits", "cifar10", "cifar100")


def get_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, train: bool = True) -> ArrayDataset:
    """A data set by name ("digits", "cifar10", "cifar100"); CIFAR needs ``data_dir`` (nothing is downloaded)."""
    if name == "digits":
        return load_digits(train)
    if name not in ("cifar10", "cifar100"):
        raise ValueError(f"get_dataset: unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if data_dir is None:
        title = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
        raise ValueError(
            f"get_dataset: {name} needs a data directory holding the extracted '{title} python version' or its .tar.gz "
            f"(from {CIFAR_URL}); minires never downloads data."
        )
    return load_cifar10(data_dir, train) if name == "cifar10" else load_cifar100(data_dir, train)


__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR_URL",
    "DATASETS",
    "ArrayDataset",
    "CifarFormatError",
    "Compose",
    "Cutout",
    "DataLoader",
    "Dataset",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RestrictedUnpickler",
    "Transform",
    "UnsafePickleError",
    "digits_mean_std",
    "get_dataset",
    "images_to_float",
    "load_cifar10",
    "load_cifar100",
    "load_digits",
    "transforms",
]
