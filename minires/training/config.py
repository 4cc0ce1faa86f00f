"""The settings of a training run (:class:`TrainConfig`) and which of them a resumed run must keep."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any

from minires.training.recipes import RECIPES

# Settings a resumed run must share with its checkpoint: they decide the model, the data and its order,
# and the optimizer/schedule state the checkpoint holds. Every other setting may change on resume
# (--epochs re-plans the schedule).
RESUME_FIXED = (
    "dataset", "model", "plain", "preact", "batch_size", "lr", "optimizer", "momentum", "schedule", "warmup_epochs",
    "weight_decay", "augment", "train_subset", "seed",
)  # fmt: skip

# Settings a resumed run takes from its own command line, never from the checkpoint (--out defaults to
# the checkpoint's folder).
RUN_LOCAL = ("out", "prefetch", "progress")


def flag_name(field: str) -> str:
    """The command-line flag that sets a TrainConfig field (``batch_size`` -> ``--batch-size``)."""
    negated = {"augment": "--no-augment", "progress": "--no-progress", "sync_bn": "--no-sync-bn"}
    return negated.get(field, "--" + field.replace("_", "-"))


@dataclass
class TrainConfig:
    """Everything a run depends on. ``None`` fields take the data set's recipe default."""

    dataset: str = "digits"
    data_dir: str | None = None
    model: str | None = None
    plain: bool = False
    preact: bool = False
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    momentum: float = 0.9
    schedule: str | None = None
    warmup_epochs: float | None = None
    weight_decay: float | None = None
    label_smoothing: float = 0.0
    clip_grad_norm: float | None = None
    augment: bool = True
    sync_bn: bool = True  # under mpiexec -n N > 1: SyncBatchNorm (global-batch statistics) instead of per-rank BatchNorm
    train_subset: int | None = None
    device: str = "cpu"
    seed: int = 0
    out: str | None = None
    prefetch: int = 2
    progress: bool = True

    def resolved(self) -> TrainConfig:
        """A copy with every recipe default filled in."""
        if self.dataset not in RECIPES:
            raise ValueError(f"--dataset: unknown data set {self.dataset!r}; choose one of {', '.join(RECIPES)}")
        recipe = RECIPES[self.dataset]
        filled = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("model", "epochs", "batch_size", "lr", "optimizer", "schedule", "warmup_epochs", "weight_decay"):
            if filled[name] is None:
                filled[name] = getattr(recipe, name)
        if filled["out"] is None:
            stamp = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
            filled["out"], n = stamp, 2
            while os.path.exists(filled["out"]):  # two runs started in the same second get their own folders
                filled["out"], n = f"{stamp}-{n}", n + 1
        return TrainConfig(**filled)


def check_resume(saved: dict[str, Any], config: TrainConfig, path: str) -> None:
    """Refuse to resume the checkpoint at ``path`` (saved settings ``saved``) with a config that changes
    any of :data:`RESUME_FIXED`."""
    for name in RESUME_FIXED:
        if name in saved and saved[name] != getattr(config, name):
            raise ValueError(
                f"--resume: {flag_name(name)} conflicts with the checkpoint {path!r}: it was trained with "
                f"{name}={saved[name]!r}, this run asks for {name}={getattr(config, name)!r}. A resumed run keeps "
                f"the checkpoint's {', '.join(map(flag_name, RESUME_FIXED))}; the other settings may change"
            )
