"""Optimizers (SGD, Adam, AdamW), learning-rate schedules and state-dict helpers, PyTorch-shaped.

Saving an optimizer and scheduler with :func:`minires.save` and resuming exactly::

    mr.save({"optimizer": optim.flatten_state_dict(opt.state_dict()),
             "scheduler": optim.flatten_state_dict(sched.state_dict())}, path)
    flat = mr.load(path)
    opt.load_state_dict(optim.unflatten_state_dict(flat, prefix="optimizer."))
    sched.load_state_dict(optim.unflatten_state_dict(flat, prefix="scheduler."))
"""

from __future__ import annotations

from minires.optim import lr_scheduler
from minires.optim.adam import Adam, AdamW
from minires.optim.optimizer import Optimizer, flatten_state_dict, unflatten_state_dict
from minires.optim.sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "flatten_state_dict", "lr_scheduler", "unflatten_state_dict"]
