"""``minires-eval --checkpoint FILE.th``: test accuracy of a PyTorch CIFAR-ResNet checkpoint on CIFAR.

The file (akamaster/pytorch_resnet_cifar10's layout, see :mod:`minires.models.pretrained`) is read
without PyTorch; the images are normalised as that code trained them (ImageNet mean / std), and the
data set follows the classifier: 10 classes -> CIFAR-10, 100 -> CIFAR-100.
"""

from __future__ import annotations

from minires.data import DataLoader, get_dataset
from minires.data.transforms import Normalize
from minires.models.pretrained import CHECKPOINT_MEAN, CHECKPOINT_STD, load_cifar_resnet_checkpoint
from minires.training.evaluate import evaluate

DATASET_BY_CLASSES = {10: "cifar10", 100: "cifar100"}


def evaluate_torch_checkpoint(path: str, model_name: str | None, data_dir: str | None, device: str = "cpu") -> str:
    """The evaluation report (accuracy, per-class accuracy, confusion matrix) of the PyTorch file ``path``."""
    model = load_cifar_resnet_checkpoint(path, model_name).float().to(device)
    classes = model.fc.weight.shape[0]
    if classes not in DATASET_BY_CLASSES:
        raise ValueError(f"{path!r} classifies {classes} classes; minires-eval evaluates CIFAR-10 (10) or CIFAR-100 (100) nets")
    if not data_dir:
        raise ValueError(f"evaluating a PyTorch checkpoint needs --data-dir (the {DATASET_BY_CLASSES[classes]} python-version "
                         "folder or its .tar.gz; minires downloads nothing)")
    test_set = get_dataset(DATASET_BY_CLASSES[classes], data_dir, train=False)
    loader = DataLoader(test_set, 500, device=device, transform=Normalize(CHECKPOINT_MEAN, CHECKPOINT_STD))
    result = evaluate(model, loader, test_set.num_classes)
    header = (f"resnet{model.depth} ({model.shortcut_padding} option-A padding) from PyTorch checkpoint {path} "
              f"on {DATASET_BY_CLASSES[classes]}, inputs normalised with mean {CHECKPOINT_MEAN} std {CHECKPOINT_STD}")
    return header + "\n" + result.report(list(test_set.classes) if test_set.classes else None)
