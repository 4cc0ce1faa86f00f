"""Optimizers (SGD, Adam, AdamW), learning-rate schedules PyTorch-shaped.

Saving an optimizer and scheduler with :func:`minires.save` and resuming exactly::

    mr.save_tree({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, path)
    saved = mr.load_tree(path)
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
"""

from __future__ import annotations

from minires.optim import lr_scheduler
from minires.optim.adam import Adam, AdamW
from minires.optim.optimizer import Optimizer
from minires.optim.sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "lr_scheduler"]
