"""The training loop behind ``minires-train``: data, model, optimizer and schedule from a
:class:`TrainConfig`, a progress bar per epoch, metrics, atomic checkpoints and exact resume.

Exact resume: all randomness is either derived from ``(seed, epoch)`` (data order and augmentation,
see :class:`minires.data.DataLoader`) or saved in the checkpoint (minires' global generator), and the
checkpoint holds weights, buffers, optimizer and scheduler state. So on the CPU a run resumed from
a checkpoint ends with the same weights, bit for bit, as one that never stopped. A Ctrl-C checkpoint
taken mid-epoch records how many batches of that epoch were done; resuming replays the loader past
them (without computing on them) so even that stays exact.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

import minires.nn.functional as F
from minires import optim
from minires import random as mr_random
from minires.backend import get_xp, to_numpy
from minires.data import DataLoader, get_dataset
from minires.data.transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip
from minires.nn import Module
from minires.nn.utils import clip_grad_norm_
from minires.training.checkpoint import load_checkpoint, save_checkpoint
from minires.training.distributed import TrainingWorld
from minires.training.evaluate import evaluate
from minires.training.metrics import append_metrics, plot_curves, read_metrics, truncate_metrics
from minires.training.recipes import RECIPES, build_model

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
CURVES = "curves.png"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


# Settings a resumed run must share with its checkpoint: they decide the model, the data and its order,
# and the optimizer/schedule state the checkpoint holds (--epochs may change: the schedule is re-planned;
# --device, --data-dir, --out, --label-smoothing, --clip-grad-norm and the progress bars may change too).
RESUME_FIXED = (
    "dataset", "model", "plain", "preact", "batch_size", "lr", "optimizer", "momentum", "schedule", "warmup_epochs",
    "weight_decay", "augment", "train_subset", "seed",
)  # fmt: skip


def flag_name(field: str) -> str:
    """The command-line flag that sets a TrainConfig field (``batch_size`` -> ``--batch-size``)."""
    return "--no-augment" if field == "augment" else "--" + field.replace("_", "-")


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


def _transforms(config: TrainConfig, mean: Any, std: Any, size: int, train: bool) -> Compose:
    recipe = RECIPES[config.dataset]
    steps: list[Any] = []
    if train and config.augment:
        if recipe.crop_padding:
            steps.append(RandomCrop(size, padding=recipe.crop_padding))
        if recipe.flip:
            steps.append(RandomHorizontalFlip())
    steps.append(Normalize(mean, std))
    return Compose(steps)


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


class _StopOnInterrupt:
    """The first Ctrl-C asks the loop to stop after the batch in hand (or, during the evaluation that ends
    an epoch, after that epoch's checkpoint), so the checkpoint is consistent; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this batch (or this epoch's evaluation) and saving a checkpoint "
              "(Ctrl-C again to abort now)", file=sys.stderr)

    def __enter__(self) -> _StopOnInterrupt:
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def check_device(device: str) -> None:
    """Fail early, with the install hint, when ``--device cuda`` has no CuPy or no GPU."""
    try:
        get_xp(device)
    except RuntimeError as exc:
        raise ValueError(f"--device {device}: {exc}") from None


def make_test_loader(config: TrainConfig, test_set: Any) -> DataLoader:
    """Batches of 500 test images, normalised with the statistics the data set carries (the training split's)."""
    size = test_set.image_shape[1]
    transform = _transforms(config, test_set.mean, test_set.std, size, train=False)
    return DataLoader(test_set, 500, device=config.device, transform=transform, prefetch=config.prefetch)


def build_evaluation(config: TrainConfig) -> tuple[Module, Any, DataLoader]:
    """(model, test set, test loader) for evaluating a checkpoint: the training split is never loaded."""
    config = config.resolved()
    check_device(config.device)
    test_set = get_dataset(config.dataset, config.data_dir, train=False)
    channels, size, _ = test_set.image_shape
    model = build_model(config.model, test_set.num_classes, channels, size, config.plain, config.preact).to(config.device)
    return model, test_set, make_test_loader(config, test_set)


class Trainer:
    """One training run; :meth:`fit` trains up to ``config.epochs``, resuming when asked."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config = config.resolved()
        check_device(config.device)
        self.world = TrainingWorld(config)  # under mpiexec -n N: this rank's share of the work (see training/distributed.py)
        mr_random.manual_seed(config.seed)
        self.train_set = get_dataset(config.dataset, config.data_dir, train=True)
        self.test_set = get_dataset(config.dataset, config.data_dir, train=False)
        if config.train_subset is not None:
            if not 0 < config.train_subset <= len(self.train_set):
                raise ValueError(f"--train-subset: expected 1..{len(self.train_set)}, got {config.train_subset}")
            keep = np.random.default_rng(config.seed).permutation(len(self.train_set))[: config.train_subset]
            self.train_set = self.train_set.subset(np.sort(keep))
        if config.batch_size > len(self.train_set):
            raise ValueError(f"--batch-size {config.batch_size} is larger than the training set ({len(self.train_set)} images); "
                             "every epoch would be empty")
        channels, size, _ = self.train_set.image_shape
        mean, std = self.train_set.mean, self.train_set.std
        self.train_loader = DataLoader(
            self.train_set, config.batch_size, drop_last=True, seed=config.seed, device=config.device,
            transform=_transforms(config, mean, std, size, train=True), prefetch=config.prefetch,
            **self.world.loader_order(self.train_set, config.seed),
        )
        self.test_loader = make_test_loader(config, self.world.test_shard(self.test_set))
        self.num_classes = self.train_set.num_classes
        model = build_model(config.model, self.num_classes, channels, size, config.plain, config.preact).to(config.device)
        self.model = self.world.prepare(model, config.sync_bn)
        self.forward = self.world.wrap(self.model)  # the model, or its DistributedDataParallel wrapper
        self.optimizer = make_optimizer(config, self.model)
        self.scheduler = make_schedule(config, self.optimizer, len(self.train_loader))
        self.epoch = 0  # completed epochs
        self.partial: dict[str, Any] = {}  # progress inside an interrupted epoch

    # ----- checkpoints ------------------------------------------------------------------------
    def checkpoint_path(self) -> str:
        return os.path.join(self.config.out, CHECKPOINT)

    def save(self, partial: dict[str, Any] | None = None) -> None:
        if self.world.is_main:
            self._write_checkpoint(partial)
        self.world.barrier()  # under mpiexec no rank goes on (and maybe ends the group) before the file is written

    def _write_checkpoint(self, partial: dict[str, Any] | None) -> None:
        save_checkpoint(
            self.checkpoint_path(),
            self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            epoch=self.epoch,
            partial=partial or {},
            rng=mr_random.get_rng_state(),
            loader=self.train_loader.get_state(),
            config=dataclasses.asdict(self.config),
            world_size=self.world.size,
        )

    def restore(self, path: str) -> None:
        ckpt = load_checkpoint(path)
        for key in ("optimizer", "scheduler", "epoch", "rng", "loader"):
            if key not in ckpt:
                raise ValueError(f"--resume: {path!r} lacks the {key!r} section of a minires-train checkpoint")
        self.world.check_resume(ckpt, path)
        saved = ckpt.get("config") or {}
        for name in RESUME_FIXED:
            if name in saved and saved[name] != getattr(self.config, name):
                raise ValueError(
                    f"--resume: {flag_name(name)} conflicts with the checkpoint {path!r}: it was trained with "
                    f"{name}={saved[name]!r}, this run asks for {name}={getattr(self.config, name)!r}. A resumed run keeps "
                    f"the checkpoint's {', '.join(map(flag_name, RESUME_FIXED))}; only --epochs, --device, --data-dir, "
                    "--out, --label-smoothing and --clip-grad-norm may change"
                )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch = int(ckpt["epoch"])
        self.partial = dict(ckpt.get("partial") or {})
        planned = (ckpt.get("config") or {}).get("epochs", self.config.epochs)
        if planned != self.config.epochs:
            self._replan_schedule(planned)
        mr_random.set_rng_state(ckpt["rng"])
        self.train_loader.set_state(ckpt["loader"])

    def _replan_schedule(self, planned: int) -> None:
        """Resuming with a different --epochs: rebuild the schedule for the new length and fast-forward
        it over the steps already taken (the checkpoint's schedule was planned for ``planned`` epochs)."""
        steps_done = self.epoch * len(self.train_loader) + int(self.partial.get("batches", 0))
        print(f"note: the checkpoint's schedule was planned for {planned} epochs; re-planning it for "
              f"{self.config.epochs} and fast-forwarding {steps_done} steps")
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self.scheduler = make_schedule(self.config, self.optimizer, len(self.train_loader))
        for _ in range(steps_done):
            self.scheduler.step()

    # ----- the loop ---------------------------------------------------------------------------
    def fit(self, resume: str | None = None) -> list[dict[str, Any]]:
        """Train to ``config.epochs``; returns the metrics of every epoch run so far."""
        config = self.config
        metrics_path = os.path.join(config.out, METRICS)
        main = self.world.is_main  # only rank 0 writes files
        if main:
            os.makedirs(config.out, exist_ok=True)
        if resume:
            self.restore(resume)
            previous = os.path.join(os.path.dirname(os.path.abspath(resume)), METRICS)
            if main and os.path.abspath(metrics_path) != previous:  # resuming into another --out: carry the history over
                if os.path.exists(previous):
                    shutil.copyfile(previous, metrics_path)
                elif os.path.exists(metrics_path):
                    os.unlink(metrics_path)
            if main:
                truncate_metrics(metrics_path, self.epoch)
            print(f"resumed from {resume} after epoch {self.epoch}" + (
                f" (+{self.partial['batches']} batches)" if self.partial else ""))
        elif main and os.path.exists(metrics_path):
            os.unlink(metrics_path)
        print(f"minires-train: {config.model}{' (plain)' if config.plain else ''} on {config.dataset} "
              f"({len(self.train_set)} train / {len(self.test_set)} test images, {self.num_classes} classes), "
              f"{sum(p.numel() for p in self.model.parameters()):,} parameters, device {config.device}, out {config.out}")
        if self.world.distributed:
            print(self.world.describe(config.batch_size, config.sync_bn))
        with _StopOnInterrupt() as interrupt:
            while self.epoch < config.epochs:
                record = self._run_epoch(interrupt)
                if not math.isfinite(record["test_loss"]):
                    raise NonFiniteLossError(
                        f"the test loss became {record['test_loss']} after epoch {record['epoch']}; stopped without "
                        f"saving that epoch. The last good checkpoint ({self.checkpoint_path()}) is kept."
                    )
                if main:
                    append_metrics(metrics_path, record)
                self.save()
                print(f"epoch {record['epoch']:3d}/{config.epochs}  lr {record['lr']:.4f}  train loss {record['train_loss']:.4f} "
                      f"acc {100 * record['train_acc']:.2f}%  test loss {record['test_loss']:.4f} "
                      f"acc {100 * record['test_acc']:.2f}%  {record['seconds']:.1f}s  {record['images_per_s']:.0f} img/s",
                      flush=True)
                if self.world.any_rank(interrupt.requested):  # Ctrl-C came during the evaluation: the epoch is complete and saved
                    print(f"\ninterrupted: saved {self.checkpoint_path()} (after epoch {self.epoch}); "
                          f"continue with --resume {self.checkpoint_path()}", file=sys.stderr)
                    raise KeyboardInterrupt
        records = read_metrics(metrics_path) if os.path.exists(metrics_path) else []
        if main and records and plot_curves(records, os.path.join(config.out, CURVES), f"{config.model} on {config.dataset}"):
            print(f"curves: {os.path.join(config.out, CURVES)}")
        return records

    def _run_epoch(self, interrupt: _StopOnInterrupt) -> dict[str, Any]:
        config = self.config
        self.model.train()
        self.train_loader.set_epoch(self.epoch)
        done = int(self.partial.get("batches", 0))
        loss_sum = float(self.partial.get("loss_sum", 0.0))
        correct = int(self.partial.get("correct", 0))
        seen = int(self.partial.get("seen", 0))
        seconds = float(self.partial.get("seconds", 0.0))
        self.partial = {}
        lr = self.optimizer.param_groups[0]["lr"]
        bar = tqdm(total=len(self.train_loader), initial=done, desc=f"epoch {self.epoch + 1}/{config.epochs}",
                   unit="batch", leave=False, disable=not config.progress, dynamic_ncols=True)
        start = time.perf_counter()
        for index, (images, labels) in enumerate(self.train_loader):
            if index < done:
                continue  # replaying an interrupted epoch: these batches were trained on already
            lr = self.optimizer.param_groups[0]["lr"]
            logits = self.forward(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
            hits = int((to_numpy(logits.data.argmax(axis=1)) == to_numpy(labels.data)).sum())
            value, n, hits = self.world.batch_totals(float(loss.item()), labels.shape[0], hits)  # over all ranks
            if not math.isfinite(value):
                bar.close()
                raise NonFiniteLossError(
                    f"the training loss became {value} at epoch {self.epoch + 1}, batch {index + 1} (lr {lr:g}); "
                    f"stopped. The last good checkpoint ({self.checkpoint_path()}, after epoch {self.epoch}) is kept. "
                    "Start a new run with a lower --lr, or resume with --clip-grad-norm."
                )
            self.optimizer.zero_grad()
            loss.backward()
            self.world.sync_gradients()
            if config.clip_grad_norm:
                clip_grad_norm_(self.model.parameters(), config.clip_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += value * n
            correct += hits
            seen += n
            elapsed = seconds + time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * correct / seen:.1f}%", img_s=f"{seen / elapsed:.0f}")
            if self.world.any_rank(interrupt.requested):
                bar.close()
                self.save(partial={"batches": index + 1, "loss_sum": loss_sum, "correct": correct, "seen": seen,
                                   "seconds": seconds + time.perf_counter() - start})
                print(f"\ninterrupted: saved {self.checkpoint_path()} (epoch {self.epoch + 1}, {index + 1} batches done); "
                      f"continue with --resume {self.checkpoint_path()}", file=sys.stderr)
                raise KeyboardInterrupt
        bar.close()
        seconds += time.perf_counter() - start
        result = self.world.all_reduce_result(evaluate(self.model, self.test_loader, self.num_classes))  # this rank's part, summed
        self.epoch += 1
        return {
            "epoch": self.epoch,
            "lr": float(lr),
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            "test_loss": result.loss,
            "test_acc": result.accuracy,
            "seconds": seconds,
            "images_per_s": seen / seconds if seconds > 0 else float("nan"),
        }


def final_weights(trainer: Trainer) -> dict[str, np.ndarray]:
    """The model's state dict as host arrays (for comparing runs)."""
    return {k: to_numpy(v.data).copy() for k, v in trainer.model.state_dict().items()}
