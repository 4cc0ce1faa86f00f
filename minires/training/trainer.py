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
import sys
import time
from typing import Any

import numpy as np
from tqdm import tqdm

import minires.nn.functional as F
from minires import random as mr_random
from minires.backend import to_numpy
from minires.data import DataLoader, get_dataset
from minires.nn.utils import clip_grad_norm_
from minires.training.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from minires.training.config import TrainConfig, check_resume
from minires.training.distributed import TrainingWorld
from minires.training.evaluate import count_correct, evaluate
from minires.training.interrupt import StopOnInterrupt
from minires.training.loaders import check_device, make_test_loader, make_transforms
from minires.training.metrics import CURVES, METRICS, append_metrics, plot_curves, read_metrics, start_metrics
from minires.training.optimization import make_optimizer, make_schedule
from minires.training.recipes import build_model


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


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
            transform=make_transforms(config, mean, std, size, train=True), prefetch=config.prefetch,
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
        check_resume(ckpt.get("config") or {}, self.config, path)
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
        if main:
            start_metrics(metrics_path, resume, self.epoch)
        if resume:
            print(f"resumed from {resume} after epoch {self.epoch}" + (
                f" (+{self.partial['batches']} batches)" if self.partial else ""))
        print(f"minires-train: {config.model}{' (plain)' if config.plain else ''} on {config.dataset} "
              f"({len(self.train_set)} train / {len(self.test_set)} test images, {self.num_classes} classes), "
              f"{sum(p.numel() for p in self.model.parameters()):,} parameters, device {config.device}, out {config.out}")
        if self.world.distributed:
            print(self.world.describe(config.batch_size, config.sync_bn))
        with StopOnInterrupt() as interrupt:
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

    def _run_epoch(self, interrupt: StopOnInterrupt) -> dict[str, Any]:
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
            hits = count_correct(logits, labels)
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
