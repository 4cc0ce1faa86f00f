"""Communicators: the few collectives data-parallel training needs, on one interface.

``SingleCommunicator`` (one process, every collective is the identity) and ``MPICommunicator``
(mpi4py; any array, host or device, travels through host memory). ``NCCLCommunicator`` in
:mod:`minires.distributed.nccl` is the GPU one. Every collective works **in place** on one
C-contiguous array and returns it, and every rank must call the same collectives in the same order
with arrays of the same shape and dtype (that is MPI's and NCCL's rule, not ours).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from minires.backend import device_of, to_device, to_numpy

REDUCE_OPS = ("sum", "mean", "max", "min")


class ReduceOp:
    """``torch.distributed.ReduceOp``-style names for the ``op`` argument (plain strings work too)."""

    SUM = "sum"
    AVG = "mean"
    MAX = "max"
    MIN = "min"


def check_op(op: str, array: Any) -> str:
    """Validate a reduction name for ``array``; 'mean' needs a floating array (an integer mean would round)."""
    if op not in REDUCE_OPS:
        raise ValueError(f"all_reduce: unknown op {op!r}; expected one of {', '.join(REDUCE_OPS)}")
    if op == "mean" and np.dtype(array.dtype).kind not in "fc":
        raise TypeError(f"all_reduce: op='mean' needs a floating-point array, got {array.dtype} (use op='sum')")
    return op


class Communicator:
    """One process's view of the group: ``rank`` in ``0..size-1``, ``local_rank`` on its own machine."""

    name = "base"
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1  # ranks on this machine

    def all_reduce(self, array: Any, op: str = "sum") -> Any:
        """Reduce ``array`` element-wise over all ranks, in place on every rank."""
        raise NotImplementedError

    def broadcast(self, array: Any, root: int = 0) -> Any:
        """Copy rank ``root``'s ``array`` into every rank's ``array``, in place."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Return only when every rank has called it."""
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """End every rank of the group now, with exit code ``code`` (used when one rank fails)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"


class SingleCommunicator(Communicator):
    """A group of one process: not launched by MPI, or ``init(backend="single")``."""

    name = "single"

    def all_reduce(self, array: Any, op: str = "sum") -> Any:
        check_op(op, array)
        return array  # sum, mean, max and min over one rank are the value itself

    def broadcast(self, array: Any, root: int = 0) -> Any:
        if root != 0:
            raise ValueError(f"broadcast: root {root} does not exist in a group of 1 process")
        return array

    def barrier(self) -> None:
        return None

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def check_contiguous(what: str, array: Any) -> None:
    """Collectives write into the array's memory, so it must be one C-contiguous block."""
    if not array.flags.c_contiguous:
        raise ValueError(f"{what}: the array (shape {tuple(array.shape)}) is not C-contiguous; pass a contiguous "
                         "array (np.ascontiguousarray) so the result can be written in place")


class MPICommunicator(Communicator):
    """Collectives over an mpi4py communicator (``MPI.COMM_WORLD`` by default).

    Host (numpy) arrays are reduced in place; device arrays are copied to the host and back, since the
    MPI that pip installs is not CUDA-aware (use the NCCL communicator on GPUs)."""

    name = "mpi"

    def __init__(self, comm: Any = None) -> None:
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)  # the ranks sharing this machine
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self._ops = {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}

    def _on_host(self, what: str, array: Any, collective: Any) -> Any:
        check_contiguous(what, array)
        if device_of(array) == "cpu":
            collective(array)
            return array
        host = np.ascontiguousarray(to_numpy(array))
        collective(host)
        array[...] = to_device(host, device_of(array))
        return array

    def all_reduce(self, array: Any, op: str = "sum") -> Any:
        check_op(op, array)
        self._on_host("all_reduce", array, lambda a: self.comm.Allreduce(self.MPI.IN_PLACE, a, op=self._ops[op]))
        if op == "mean":
            array /= array.dtype.type(self.size)
        return array

    def broadcast(self, array: Any, root: int = 0) -> Any:
        if not 0 <= root < self.size:
            raise ValueError(f"broadcast: root {root} does not exist in a group of {self.size} processes")
        return self._on_host("broadcast", array, lambda a: self.comm.Bcast(a, root=root))

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)
