"""Evaluation: loss, accuracy, per-class accuracy and the confusion matrix of a model on a loader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

import minires.nn.functional as F
from minires.autograd.grad_mode import no_grad
from minires.backend import to_numpy
from minires.nn import Module
from minires.tensor import Tensor


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    confusion: np.ndarray  # (classes, classes): row = true class, column = predicted class

    @property
    def per_class_accuracy(self) -> np.ndarray:
        totals = self.confusion.sum(axis=1)
        return np.divide(np.diag(self.confusion), totals, out=np.full(len(totals), np.nan), where=totals > 0)

    def report(self, class_names: list[str] | None = None) -> str:
        """Accuracy, per-class accuracy and the confusion matrix as text."""
        n = self.confusion.shape[0]
        names = class_names or [str(i) for i in range(n)]
        width = max(5, max(len(s) for s in names))
        lines = [f"test loss {self.loss:.4f}   test accuracy {100 * self.accuracy:.2f}% ({int(np.trace(self.confusion))}/"
                 f"{int(self.confusion.sum())})", "", "per-class accuracy:"]
        for name, acc, total in zip(names, self.per_class_accuracy, self.confusion.sum(axis=1)):
            lines.append(f"  {name:>{width}}  {100 * acc:6.2f}%  (n={int(total)})")
        lines += ["", "confusion matrix (rows: true class, columns: predicted):"]
        cell = max(4, len(str(int(self.confusion.max()))) + 1)
        lines.append(" " * (width + 2) + "".join(f"{s[:cell - 1]:>{cell}}" for s in names))
        for name, row in zip(names, self.confusion):
            lines.append(f"  {name:>{width}}" + "".join(f"{int(v):>{cell}}" for v in row))
        return "\n".join(lines)


def predicted_classes(logits: Tensor) -> np.ndarray:
    """Each row's arg-max class of logits (N, classes), as a host int array (N,)."""
    return to_numpy(logits.data.argmax(axis=1))


def count_correct(logits: Tensor, labels: Tensor) -> int:
    """How many rows of logits (N, classes) pick their label (N,)."""
    return int((predicted_classes(logits) == to_numpy(labels.data)).sum())


def evaluate(model: Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int) -> EvalResult:
    """Run ``model`` in eval mode over ``batches``; restores the model's previous train/eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = 0.0
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    try:
        with no_grad():
            for images, labels in batches:
                logits = model(images)
                loss_sum += float(F.cross_entropy(logits, labels, reduction="sum").item())
                np.add.at(confusion, (to_numpy(labels.data), predicted_classes(logits)), 1)
    finally:
        model.train(was_training)
    count = int(confusion.sum())
    if count == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return EvalResult(loss_sum / count, float(np.trace(confusion)) / count, confusion)
