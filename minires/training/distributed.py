"""What ``minires-train`` does differently under ``mpiexec -n N`` (N > 1): the hooks the Trainer calls.

- **data**: each rank trains on its share of every epoch (:class:`~minires.distributed.DistributedSampler`,
  same permutation on every rank, ``indices[rank::N]``); ``--batch-size`` is per process, so the global
  batch is N x batch size. The test set is split into N disjoint parts and the per-part counts are
  summed, so the test accuracy covers every test image exactly once.
- **model**: BatchNorm layers become :class:`~minires.distributed.SyncBatchNorm` (global-batch statistics,
  so N ranks x B images train like one process with N*B images; ``--no-sync-bn`` keeps per-rank
  statistics), and the model is wrapped in
  :class:`~minires.distributed.DistributedDataParallel` (rank 0's initial weights; averaged gradients).
- **agreement**: each step's loss, correct count and Ctrl-C flag are all-reduced, so every rank sees the
  same global numbers and stops (on a NaN loss or Ctrl-C) at the same step — never one rank alone.
- **output**: only rank 0 prints, shows progress bars and writes metrics.jsonl, checkpoints and curves
  (the other ranks' stdout goes to /dev/null); errors still reach stderr from every rank.

With one process (no launcher, or ``mpiexec -n 1``) every hook is the identity and training is exactly
what it was before this module existed.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

import minires.distributed as dist
from minires.nn import Module
from minires.training.evaluate import EvalResult


class TrainingWorld:
    """This process's place in a (possibly one-process) data-parallel run; built by the Trainer."""

    def __init__(self, config: Any) -> None:
        self.comm = dist.init(backend="auto", device=config.device)
        self.rank, self.size = self.comm.rank, self.comm.size
        self.is_main = self.rank == 0
        self.distributed = self.size > 1
        self.ddp: dist.DistributedDataParallel | None = None
        if self.distributed:
            config.out = dist.broadcast_object(config.out)  # rank 0's timestamped folder for everyone
            config.progress = config.progress and self.is_main
            if not self.is_main:
                sys.stdout = open(os.devnull, "w")  # for the life of the process

    def describe(self, batch_size: int, sync_bn: bool) -> str:
        """The line rank 0 prints about the parallel setup."""
        from minires.ops._parallel import threads

        return (f"data-parallel: {self.size} processes ({self.comm.name}, {threads()} thread(s) each), batch {batch_size} "
                f"per process, global batch {self.size * batch_size}, "
                + ("SyncBatchNorm" if sync_bn else "BatchNorm statistics per process"))  # fmt: skip

    def loader_order(self, dataset: Any, seed: int) -> dict[str, Any]:
        """DataLoader arguments for the training order: its own shuffle, or this rank's DistributedSampler."""
        if not self.distributed:
            return {"shuffle": True}
        return {"sampler": dist.DistributedSampler(dataset, self.size, self.rank, shuffle=True, seed=seed)}

    def test_shard(self, test_set: Any) -> Any:
        """This rank's disjoint part of the test set (every image in exactly one part)."""
        if not self.distributed:
            return test_set
        if len(test_set) < self.size:
            raise ValueError(f"the test set has {len(test_set)} images, fewer than the {self.size} processes sharing it")
        return test_set.subset(np.arange(self.rank, len(test_set), self.size))

    def wrap(self, model: Module) -> Module:
        """The module to call in training: the model itself, or (N > 1) a DDP wrapper of its SyncBatchNorm form.
        Convert before calling so ``model`` (saved in checkpoints) is the converted one: see Trainer."""
        if not self.distributed:
            return model
        self.ddp = dist.DistributedDataParallel(model)
        return self.ddp

    def prepare(self, model: Module, sync_bn: bool) -> Module:
        """``model`` with SyncBatchNorm in place of BatchNorm when N > 1 and ``sync_bn`` (same parameters and
        state-dict keys)."""
        return dist.convert_sync_batchnorm(model) if self.distributed and sync_bn else model

    def sync_gradients(self) -> None:
        """Average the gradients over the ranks (after backward, before clipping and the step)."""
        if self.ddp is not None:
            self.ddp.sync_gradients()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def batch_totals(self, loss: float, count: int, correct: int) -> tuple[float, int, int]:
        """(mean loss, images, correct) of this step over all ranks."""
        if not self.distributed:
            return loss, count, correct
        total = dist.all_reduce_metrics({"loss": loss * count, "count": count, "correct": correct})
        return total["loss"] / total["count"], int(total["count"]), int(total["correct"])

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (used for Ctrl-C)."""
        if not self.distributed:
            return flag
        return dist.all_reduce_metrics({"flag": float(flag)}, op="max")["flag"] > 0

    def all_reduce_result(self, local: EvalResult) -> EvalResult:
        """The evaluation of the whole test set from each rank's result on its part: loss and confusion summed."""
        if not self.distributed:
            return local
        confusion = local.confusion.copy()
        loss_sum = np.array([local.loss * confusion.sum()], dtype=np.float64)
        dist.all_reduce(confusion)
        dist.all_reduce(loss_sum)
        count = int(confusion.sum())
        return EvalResult(float(loss_sum[0]) / count, float(np.trace(confusion)) / count, confusion)

    def check_resume(self, ckpt: dict[str, Any], path: str) -> None:
        """A checkpoint continues only with the number of processes that wrote it (that fixes the global batch)."""
        saved = int(ckpt.get("world_size", 1))
        if saved != self.size:
            raise ValueError(f"--resume: {path!r} was trained by {saved} process(es) (global batch = processes x "
                             f"--batch-size); this run has {self.size}. Resume it with mpiexec -n {saved}")


def exit_code(code: int) -> int:
    """``code``; under several processes a failing rank (code != 0) first aborts them all, since the others
    may be waiting in a collective this rank will never join (MPI_Abort ends every rank with ``code``)."""
    if code != 0 and dist.is_initialized() and dist.get_world_size() > 1:
        dist.abort(code)
    return code
