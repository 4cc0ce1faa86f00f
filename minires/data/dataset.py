"""Datasets: the ``Dataset`` protocol and ``ArrayDataset``, a whole data set held as two arrays.

A dataset maps an index to ``(image, label)``. :class:`ArrayDataset` also gathers a whole batch at
once with one fancy-indexing copy (:meth:`ArrayDataset.get_batch`), which is what
:class:`~minires.data.DataLoader` uses, so batching never loops over images in Python.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def images_to_float(images: Any) -> Any:
    """uint8 pixels 0..255 -> float32 in [0, 1]; float images pass through as float32. Any device.

    ``(N, C, H, W)`` uint8 or float -> ``(N, C, H, W)`` float32, computed with the array's own module
    (numpy or cupy), so a uint8 batch moved to the GPU is converted there (4x less to copy).
    """
    if images.dtype == np.uint8:
        out = images.astype(np.float32)
        out *= np.float32(1.0 / 255.0)
        return out
    if images.dtype != np.float32:
        return images.astype(np.float32)
    return images


class Dataset:
    """A map-style dataset: ``len(ds)`` samples, ``ds[i] -> (image (C, H, W) float32, label int)``.

    Subclasses implement ``__len__`` and ``__getitem__``. :meth:`get_batch` has a generic version that
    stacks items one by one; datasets that hold arrays override it with one vectorised gather.
    """

    classes: list[str] = []

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, int]:
        raise NotImplementedError

    def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gather samples ``indices`` (B,) -> (images (B, C, H, W), labels (B,) int64), on the host."""
        return stack_samples(self, indices)


def stack_samples(dataset: Any, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Any map-style dataset (``dataset[i] -> (image, label)``), one item at a time:
    ``indices`` (B,) -> (images (B, C, H, W), labels (B,) int64), on the host."""
    items = [dataset[int(i)] for i in indices]
    images = np.stack([np.asarray(img) for img, _ in items])
    labels = np.asarray([int(lab) for _, lab in items], dtype=np.int64)
    return images, labels


class ArrayDataset(Dataset):
    """A data set held whole in memory as ``images`` (N, C, H, W) and ``labels`` (N,) int64.

    ``images`` may be float32 (used as is) or uint8 pixels 0..255, kept as uint8 to save memory (a
    quarter of float32: CIFAR-10's 50,000 training images take 154 MB instead of 614 MB) and
    converted to float32 in [0, 1] per batch, on the batch's device (:func:`images_to_float`).
    ``classes`` names the labels; ``mean`` / ``std`` are per-channel statistics (of the [0, 1] images
    of the training split) for :class:`~minires.data.transforms.Normalize`.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        classes: Sequence[str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        name: str = "",
    ) -> None:
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim != 4:
            raise ValueError(f"ArrayDataset: images must be (N, C, H, W), got shape {images.shape}")
        if images.dtype != np.uint8:
            images = images.astype(np.float32, copy=False)
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"ArrayDataset: labels must be ({images.shape[0]},) to match images {images.shape}, got shape {labels.shape}"
            )
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"ArrayDataset: labels must be integers, got dtype {labels.dtype}")
        labels = labels.astype(np.int64, copy=False)
        num_classes = len(classes) if classes is not None else (int(labels.max()) + 1 if labels.size else 0)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"ArrayDataset: labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
        self.images = images
        self.labels = labels
        self.classes = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
        channels = images.shape[1]
        self.mean = tuple(float(m) for m in mean) if mean is not None else None
        self.std = tuple(float(s) for s in std) if std is not None else None
        for what, stat in (("mean", self.mean), ("std", self.std)):
            if stat is not None and len(stat) != channels:
                raise ValueError(f"ArrayDataset: {what} has {len(stat)} values, images have {channels} channels")
        self.name = name

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        """One sample: (image (C, H, W) float32 in the dataset's scale, label)."""
        return images_to_float(self.images[index][None])[0], int(self.labels[index])

    def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gather ``indices`` (B,) -> (images (B, C, H, W) in the stored dtype, labels (B,) int64), host arrays.

        uint8 images stay uint8 here; the loader converts them after moving the batch to its device.
        """
        indices = np.asarray(indices, dtype=np.intp)
        return self.images[indices], self.labels[indices]

    def subset(self, indices: Sequence[int] | np.ndarray) -> ArrayDataset:
        """A new ArrayDataset of the samples ``indices`` (copies), with the same classes and statistics."""
        indices = np.asarray(indices, dtype=np.intp)
        return ArrayDataset(self.images[indices], self.labels[indices], self.classes, self.mean, self.std, self.name)

    def __repr__(self) -> str:
        return (
            f"ArrayDataset({self.name or 'unnamed'}: {len(self)} images {self.image_shape} {self.images.dtype}, "
            f"{self.num_classes} classes)"
        )
