"""Shared by the examples that take ``--weights FILE``: a trained CIFAR ResNet, its freshly initialised
twin, and a batch of the images it was trained on.

``FILE`` is a PyTorch checkpoint of the common CIFAR-ResNet code (``resnet56-4bfd9763.th`` from
akamaster/pytorch_resnet_cifar10's releases or ``pretrained_models/`` folder; read without PyTorch) or a
minires file (a ``minires-train`` checkpoint.npz, or an ``mr.save``-d state dict). minires downloads nothing.
"""

from __future__ import annotations

import numpy as np

import minires as mr
from minires.data import get_dataset, load_digits
from minires.data.dataset import images_to_float
from minires.data.transforms import Normalize
from minires.models import CHECKPOINT_MEAN, CHECKPOINT_STD, CifarResNet, load_cifar_resnet_checkpoint
from minires.torchfile import is_torch_file


def trained_and_initialised(path: str, seed: int) -> tuple[CifarResNet, CifarResNet]:
    """(the net in ``path``, a He-initialised net of the same architecture), both float32."""
    trained = load_cifar_resnet_checkpoint(path).float()
    mr.manual_seed(seed)
    fresh = CifarResNet(trained.depth, num_classes=trained.fc.weight.shape[0], in_channels=trained.in_channels,
                        plain=trained.plain, preact=trained.preact, shortcut_padding=trained.shortcut_padding)
    return trained, fresh


def batch_for(model: CifarResNet, path: str, batch: int, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` normalised (images, labels) the model understands: digits for a one-channel net, else the
    CIFAR test split in ``data_dir`` -- normalised as the file's training code did (PyTorch files: ImageNet
    mean/std, as akamaster's trainer; minires files: the data set's own statistics)."""
    classes = model.fc.weight.shape[0]
    if model.in_channels == 1:
        data = load_digits(train=True)
        mean, std = data.mean, data.std
    else:
        if not data_dir:
            raise SystemExit(f"--weights {path}: a 3-channel CIFAR net needs --data-dir (the CIFAR-{classes} python-version "
                             "folder or .tar.gz; minires downloads nothing)")
        data = get_dataset("cifar10" if classes == 10 else "cifar100", data_dir, train=False)
        mean, std = (CHECKPOINT_MEAN, CHECKPOINT_STD) if is_torch_file(path) else (data.mean, data.std)
    images, labels = data.get_batch(np.arange(min(batch, len(data))))
    return Normalize(mean, std)(images_to_float(images)), labels
