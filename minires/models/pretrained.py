"""Trained CIFAR ResNets from a file, in one call: PyTorch checkpoints of the common CIFAR-ResNet code, or minires' own.

The most copied PyTorch CIFAR-ResNet code (akamaster/pytorch_resnet_cifar10, with pretrained resnet20 /
32 / 44 / 56 / 110 / 1202 files in its GitHub releases and ``pretrained_models/`` folder) has the same
layers as :class:`~minires.models.CifarResNet` but

- names its classifier ``linear`` (minires: ``fc``);
- saves ``{"state_dict": ..., "best_prec1": ...}`` with every key under ``module.`` (``nn.DataParallel``),
  in the legacy ``torch.save`` format;
- pads option A's shortcut with ``planes // 4`` zero channels on *each* side (``shortcut_padding="split"``);
- normalises its inputs with the ImageNet statistics :data:`CHECKPOINT_MEAN` / :data:`CHECKPOINT_STD`.

:func:`load_cifar_resnet_checkpoint` reads such a file with :func:`minires.load_torch` (no PyTorch, no
pickle code run), undoes the first three and returns a CIFAR ResNet with identical logits::

    model = load_cifar_resnet_checkpoint("resnet56-4bfd9763.th", "resnet56").eval()
    x = (images - np.array(CHECKPOINT_MEAN)[:, None, None]) / np.array(CHECKPOINT_STD)[:, None, None]

minires downloads nothing: fetch the files yourself from that repository.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from minires.models.cifar_resnet import CifarResNet
from minires.serialization import TREE_KEY, load, load_tree
from minires.torchfile import is_torch_file, load_torch, unwrap_state_dict

# The input normalisation akamaster/pytorch_resnet_cifar10's trainer.py used (ImageNet's mean / std).
CHECKPOINT_MEAN = (0.485, 0.456, 0.406)
CHECKPOINT_STD = (0.229, 0.224, 0.225)


def _depth_from_arch(arch: str | int) -> int:
    if isinstance(arch, int):
        return arch
    match = re.fullmatch(r"resnet(\d+)", str(arch))
    if not match:
        raise ValueError(f"load_cifar_resnet_checkpoint: arch should be a CIFAR ResNet name like 'resnet56', got {arch!r}")
    return int(match.group(1))


def _blocks_per_stage(state: Mapping[str, Any], where: str) -> int:
    if any(k.startswith("layer4.") for k in state):
        raise ValueError(f"load_cifar_resnet_checkpoint: {where} holds a torchvision-style ResNet (four stages, layer4.*), "
                         "not a CIFAR ResNet; build it with minires.models.resnet18/34/50/... and use load_state_dict")
    counts = []
    for stage in (1, 2, 3):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        if not blocks:
            raise ValueError(f"load_cifar_resnet_checkpoint: {where} has no layer{stage}.* weights; not a CIFAR ResNet "
                             f"(keys start: {list(state)[:6]})")
        counts.append(max(blocks) + 1)
    if len(set(counts)) != 1:
        raise ValueError(f"load_cifar_resnet_checkpoint: {where} has {counts} blocks in its three stages; "
                         "a CIFAR ResNet has equal stages")
    return counts[0]


def cifar_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A PyTorch CIFAR-ResNet checkpoint's weights under minires' names: unwrapped from ``{"state_dict": ...}``,
    without the ``module.`` prefix, ``linear.*`` renamed ``fc.*``."""
    state = unwrap_state_dict(checkpoint)
    return {("fc." + k[len("linear."):] if k.startswith("linear.") else k): v for k, v in state.items()}


def _read(source: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any], str, str]:
    """(state dict, settings, default padding, description) from a PyTorch file, a minires file or a loaded dict."""
    if isinstance(source, Mapping):
        return cifar_state_dict(source), {}, "split", "the checkpoint dict"
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_cifar_resnet_checkpoint: no file at {path!r}")
    if is_torch_file(path):
        return cifar_state_dict(load_torch(path)), {}, "split", repr(path)
    try:  # a minires .npz: a training checkpoint (save_tree) or an mr.save-d state dict
        tree = load_tree(path)
    except ValueError as exc:
        if TREE_KEY not in str(exc):
            raise
        tree = {"model": load(path)}
    if "model" not in tree:
        raise ValueError(f"load_cifar_resnet_checkpoint: {path!r} has no 'model' section: not a minires-train checkpoint")
    config = tree.get("config", {})
    settings = {k: config[k] for k in ("plain", "preact") if k in config}
    if "model" in config:
        settings["arch"] = config["model"]
    return dict(tree["model"]), settings, "end", repr(path)


def load_cifar_resnet_checkpoint(
    source: str | os.PathLike[str] | Mapping[str, Any], arch: str | int | None = None, shortcut_padding: str | None = None
) -> CifarResNet:
    """A :class:`CifarResNet` with the weights of ``source``: a ``.th`` / ``.pt`` / ``.pth`` PyTorch file of the
    akamaster CIFAR-ResNet code (or a dict :func:`minires.load_torch` returned from one), or a minires
    ``.npz`` (a ``minires-train`` checkpoint or an ``mr.save``-d state dict).

    ``arch`` ("resnet20" ... "resnet1202", or the depth) is checked against the file; by default it is read
    from the weights (blocks per stage), as are the classes and input channels. ``shortcut_padding``
    defaults to ``"split"`` for PyTorch checkpoints (that code's option A) and ``"end"`` for minires files.
    The model is float64 when the weights are, float32 otherwise, and in training mode like any new
    module: call ``.eval()`` to evaluate it.
    """
    state, settings, default_padding, where = _read(source)
    n = _blocks_per_stage(state, where)
    depth = 6 * n + 2
    wanted = arch if arch is not None else settings.get("arch")
    if wanted is not None and _depth_from_arch(wanted) != depth:
        raise ValueError(f"load_cifar_resnet_checkpoint: {where} holds a ResNet-{depth} ({n} blocks per stage), not {wanted}")
    for key in ("conv1.weight", "fc.weight"):
        if key not in state:
            raise ValueError(f"load_cifar_resnet_checkpoint: {where} has no {key!r}; not a CIFAR ResNet "
                             f"(keys start: {list(state)[:6]})")
    model = CifarResNet(
        depth, num_classes=state["fc.weight"].shape[0], in_channels=state["conv1.weight"].shape[1],
        plain=bool(settings.get("plain", False)), preact=bool(settings.get("preact", "final_bn.weight" in state)),
        shortcut_padding=shortcut_padding or default_padding,
    )
    if state["conv1.weight"].dtype == np.float64:  # keep float64 weights exact (the model is float32 otherwise)
        model.double()
    model.load_state_dict(state)
    return model


__all__ = ["CHECKPOINT_MEAN", "CHECKPOINT_STD", "cifar_state_dict", "load_cifar_resnet_checkpoint"]
