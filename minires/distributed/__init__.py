"""Data-parallel training on several processes: MPI (mpi4py) on CPUs, NCCL (CuPy) on GPUs.

Launch one process per CPU socket or GPU with ``mpiexec -n N python train.py`` (or
``mpiexec -n N minires-train ...``); in the script::

    import minires.distributed as dist

    dist.init()                                            # "auto": single / mpi / nccl
    model = dist.convert_sync_batchnorm(model)             # optional: global BatchNorm statistics
    model = dist.DistributedDataParallel(model)            # rank 0's weights everywhere
    sampler = dist.DistributedSampler(train_set, seed=0)   # each rank its share
    loader = DataLoader(train_set, 64, sampler=sampler, drop_last=True)  # 64 per rank
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            model.sync_gradients()                         # mean over the ranks
            optimizer.step()

Without an MPI launcher everything still runs, as a group of one process.
"""

from minires.distributed.collectives import all_reduce, all_reduce_metrics, barrier, broadcast, broadcast_object
from minires.distributed.comm import Communicator, MPICommunicator, ReduceOp, SingleCommunicator
from minires.distributed.data_parallel import DistributedDataParallel
from minires.distributed.group import (
    abort,
    destroy,
    get_backend,
    get_local_rank,
    get_rank,
    get_world_size,
    init,
    is_initialized,
    is_main_process,
    world,
)
from minires.distributed.launch import launched_by_mpi, launched_world_size
from minires.distributed.sampler import DistributedSampler
from minires.distributed.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm, sync_batch_norm

__all__ = [
    "Communicator", "DistributedDataParallel", "DistributedSampler", "MPICommunicator", "ReduceOp",
    "SingleCommunicator", "SyncBatchNorm", "abort", "all_reduce", "all_reduce_metrics", "barrier", "broadcast",
    "broadcast_object", "convert_sync_batchnorm", "destroy", "get_backend", "get_local_rank", "get_rank",
    "get_world_size", "init", "is_initialized", "is_main_process", "launched_by_mpi", "launched_world_size",
    "sync_batch_norm", "world",
]  # fmt: skip
