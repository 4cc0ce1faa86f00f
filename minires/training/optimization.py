"""The optimizer and learning-rate schedule of a training run, built from its :class:`TrainConfig`."""

from __future__ import annotations

from minires import optim
from minires.nn import Module
from minires.training.config import TrainConfig


def make_optimizer(config: TrainConfig, model: Module) -> optim.Optimizer:
    # No weight decay on BatchNorm parameters and biases (1-d tensors), as is usual for ResNets.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    if config.optimizer == "adam":
        return optim.Adam(groups, lr=config.lr)
    if config.optimizer == "adamw":
        return optim.AdamW(groups, lr=config.lr)
    raise ValueError(f"--optimizer: unknown optimizer {config.optimizer!r}; choose sgd, adam or adamw")


def make_schedule(config: TrainConfig, optimizer: optim.Optimizer, steps_per_epoch: int) -> optim.lr_scheduler.LRScheduler:
    """A per-iteration schedule over the whole run, with an optional linear warm-up."""
    sched = optim.lr_scheduler
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), max(total - 1, 0))
    main_steps = max(total - warmup, 1)
    if config.schedule == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(total, 2))
    if config.schedule == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=main_steps)
    elif config.schedule == "step":
        main = sched.MultiStepLR(optimizer, milestones=[int(main_steps * 0.5), int(main_steps * 0.75)], gamma=0.1)
    elif config.schedule == "constant":
        main = sched.StepLR(optimizer, step_size=max(total, 1) + 1, gamma=1.0)
    else:
        raise ValueError(f"--schedule: unknown schedule {config.schedule!r}; choose cosine, onecycle, step or constant")
    if warmup == 0:
        return main
    ramp = sched.LinearLR(optimizer, start_factor=0.1, end_factor=1.0, total_iters=warmup)
    return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
