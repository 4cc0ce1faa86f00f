"""Per-epoch metrics: ``metrics.jsonl`` (one JSON object per epoch) and ``curves.png``."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np

METRICS = "metrics.jsonl"  # file names inside a run's --out folder
CURVES = "curves.png"
METRIC_KEYS = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "images_per_s")


def append_metrics(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one epoch's record (the keys in METRIC_KEYS) as a JSON line."""
    missing = [k for k in METRIC_KEYS if k not in record]
    if missing:
        raise ValueError(f"append_metrics: record lacks {missing}")
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({k: record[k] for k in METRIC_KEYS}) + "\n")


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(path: str | os.PathLike[str], last_epoch: int) -> None:
    """Keep only the records up to ``last_epoch`` (when resuming from an earlier checkpoint)."""
    if not os.path.exists(path):
        return
    kept = [r for r in read_metrics(path) if r["epoch"] <= last_epoch]
    with open(path, "w", encoding="utf-8") as f:
        for r in kept:
            f.write(json.dumps(r) + "\n")


def start_metrics(path: str | os.PathLike[str], resume: str | None, epoch: int) -> None:
    """Prepare ``path`` for a run: empty for a new run; for one resumed from checkpoint ``resume`` after
    ``epoch`` epochs, the history up to that epoch (copied from the checkpoint's folder when the run
    writes to another --out)."""
    if resume is None:
        if os.path.exists(path):
            os.unlink(path)
        return
    previous = os.path.join(os.path.dirname(os.path.abspath(resume)), METRICS)
    if os.path.abspath(path) != previous:  # resuming into another --out: carry the history over
        if os.path.exists(previous):
            shutil.copyfile(previous, path)
        elif os.path.exists(path):
            os.unlink(path)
    truncate_metrics(path, epoch)


def plot_curves(records: list[dict[str, Any]], path: str | os.PathLike[str], title: str = "") -> bool:
    """Loss and accuracy curves (train and test by epoch) to ``path``; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = np.array([r["epoch"] for r in records])
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in records], "o-", label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in records], "s-", label="test")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in records], "o-", label="train")
    ax_acc.plot(epochs, [100 * r["test_acc"] for r in records], "s-", label="test")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
