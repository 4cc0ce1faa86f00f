"""``NCCLCommunicator``: collectives on GPU arrays with NCCL (through ``cupy.cuda.nccl``).

The processes are started by ``mpiexec`` and find each other over MPI: rank 0 asks NCCL for a unique
id and broadcasts it with MPI, then every rank joins the NCCL communicator with it. Each process
drives the GPU ``local_rank % gpus_on_this_machine`` (NCCL refuses two ranks on one device). CuPy
(device) arrays go through NCCL on the current stream; host arrays (metrics, flags, strings) go through
the MPI communicator underneath, so everything in :mod:`minires.distributed` works unchanged.

Not run in this project's CI (no GPU there); see README, "Several processes and GPUs".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minires.backend import device_of, get_xp
from minires.distributed.comm import MPICommunicator, check_contiguous, check_op


class NCCLCommunicator(MPICommunicator):
    """MPI for start-up and host arrays, NCCL for device arrays."""

    name = "nccl"

    def __init__(self, comm: Any = None) -> None:
        super().__init__(comm)
        cupy = get_xp("cuda")  # raises the install hint when CuPy or a GPU is missing
        from cupy.cuda import nccl

        self.cupy, self.nccl = cupy, nccl
        self.device_id = self.local_rank % cupy.cuda.runtime.getDeviceCount()
        cupy.cuda.Device(self.device_id).use()
        uid = np.zeros(128, dtype=np.int64)  # NCCL_UNIQUE_ID_BYTES: get_unique_id() returns 128 signed chars
        if self.rank == 0:
            uid[:] = np.asarray(nccl.get_unique_id(), dtype=np.int64)
        self.comm.Bcast(uid, root=0)  # as numbers, not a pickle
        self.nccl_comm = nccl.NcclCommunicator(self.size, tuple(int(v) for v in uid), self.rank)
        self._ops = {**self._ops, "nccl_sum": nccl.NCCL_SUM, "nccl_max": nccl.NCCL_MAX, "nccl_min": nccl.NCCL_MIN}
        self._dtypes = {
            np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.float32): nccl.NCCL_FLOAT32,
            np.dtype(np.float64): nccl.NCCL_FLOAT64, np.dtype(np.int32): nccl.NCCL_INT32,
            np.dtype(np.int64): nccl.NCCL_INT64, np.dtype(np.uint8): nccl.NCCL_UINT8, np.dtype(np.int8): nccl.NCCL_INT8,
        }  # fmt: skip

    def _nccl_dtype(self, what: str, array: Any) -> Any:
        try:
            return self._dtypes[np.dtype(array.dtype)]
        except KeyError:
            raise TypeError(f"{what}: NCCL cannot reduce {array.dtype} arrays; expected one of "
                            f"{', '.join(str(d) for d in self._dtypes)}") from None

    def all_reduce(self, array: Any, op: str = "sum") -> Any:
        if device_of(array) != "cuda":
            return super().all_reduce(array, op)
        check_op(op, array)
        check_contiguous("all_reduce", array)
        nccl_op = self._ops["nccl_" + ("sum" if op == "mean" else op)]
        stream = self.cupy.cuda.get_current_stream().ptr
        self.nccl_comm.allReduce(array.data.ptr, array.data.ptr, array.size, self._nccl_dtype("all_reduce", array),
                                 nccl_op, stream)
        if op == "mean":
            array /= array.dtype.type(self.size)
        return array

    def broadcast(self, array: Any, root: int = 0) -> Any:
        if device_of(array) != "cuda":
            return super().broadcast(array, root)
        if not 0 <= root < self.size:
            raise ValueError(f"broadcast: root {root} does not exist in a group of {self.size} processes")
        check_contiguous("broadcast", array)
        stream = self.cupy.cuda.get_current_stream().ptr
        self.nccl_comm.bcast(array.data.ptr, array.size, self._nccl_dtype("broadcast", array), root, stream)
        return array

    def barrier(self) -> None:
        self.cupy.cuda.get_current_stream().synchronize()  # this rank's queued NCCL work is done
        super().barrier()

    def abort(self, code: int = 1) -> None:
        try:
            self.nccl_comm.abort()  # unblock kernels waiting on peers that will never come
        finally:
            super().abort(code)
