"""The embedded default data set: scikit-learn's handwritten digits (no download).

1,797 real 8x8 grey images of the digits 0-9 (UCI "optdigits" test set, shipped inside scikit-learn),
pixel values 0..16. Served as float32 ``(N, 1, 8, 8)`` scaled to [0, 1], labels int64 0..9.

The split is fixed and stratified: ``train_test_split(test_size=360, stratify=labels,
random_state=0)`` -> **1,437 training and 360 test images** (each class's share equal in both, within
one image), each split kept in the original order. Both splits carry the per-channel mean/std of the
*training* split (about 0.3054 / 0.3761) for :class:`~minires.data.transforms.Normalize`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from minires.data.dataset import ArrayDataset

DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0
DIGITS_CLASSES = [str(d) for d in range(10)]


@lru_cache(maxsize=1)
def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, test_images, test_labels) as read-only arrays, computed once."""
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("minires.data.load_digits needs scikit-learn (it ships the digits data): pip install scikit-learn") from exc
    bunch = sklearn_load_digits()
    images = (bunch.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(labels.size), test_size=DIGITS_TEST_SIZE, stratify=labels, random_state=DIGITS_SPLIT_SEED
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    parts = (images[train_idx], labels[train_idx], images[test_idx], labels[test_idx])
    for a in parts:
        a.flags.writeable = False
    return parts


def digits_mean_std() -> tuple[tuple[float], tuple[float]]:
    """Per-channel (mean, std) of the training split's [0, 1] images (one channel), in float64."""
    train_images = _digits_split()[0].astype(np.float64)
    return (float(train_images.mean()),), (float(train_images.std()),)


def load_digits(train: bool = True) -> ArrayDataset:
    """The training (1,437 images) or test (360 images) split: images (N, 1, 8, 8) float32 in [0, 1], labels (N,) int64."""
    train_images, train_labels, test_images, test_labels = _digits_split()
    mean, std = digits_mean_std()
    images, labels = (train_images, train_labels) if train else (test_images, test_labels)
    return ArrayDataset(images, labels, DIGITS_CLASSES, mean, std, name="digits-train" if train else "digits-test")
