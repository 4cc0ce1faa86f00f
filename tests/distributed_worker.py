"""Programs the distributed tests run under ``mpiexec -n N`` (or alone, as one process).

``python tests/distributed_worker.py SCENARIO OUT_DIR [ARGS]``; each rank writes what it computed to
``OUT_DIR/rank<r>.npz`` and the test (in the pytest process) checks it against answers it computes
itself. Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import os
import sys

import numpy as np

import minires as mr
import minires.distributed as dist
import minires.nn as nn
import minires.nn.functional as F
from minires import optim
from minires.data import DataLoader
from minires.data.dataset import ArrayDataset


def save(out: str, **arrays: object) -> None:
    np.savez(os.path.join(out, f"rank{dist.get_rank()}.npz"), **arrays)


def collectives(out: str) -> None:
    """Each rank contributes values that depend on its rank; the test knows the reductions' answers."""
    dist.init()
    r, n = dist.get_rank(), dist.get_world_size()
    base = np.arange(6, dtype=np.float64).reshape(2, 3)
    results = {name: base * (r + 1) for name in ("sum", "mean", "max", "min")}
    for name, array in results.items():
        dist.all_reduce(array, op=name)
    ints = np.full(4, r + 1, dtype=np.int64)
    dist.all_reduce(ints)
    t = mr.tensor(np.full(3, float(r + 1), dtype=np.float32))
    same = dist.all_reduce(t, op=dist.ReduceOp.SUM)
    bcast = np.full(5, float(r), dtype=np.float32)
    dist.broadcast(bcast, src=n - 1)
    obj = dist.broadcast_object({"out": f"from rank {r}", "n": [r, 2]}, src=0)
    metrics = dist.all_reduce_metrics({"correct": r + 1, "seen": 10})
    dist.barrier()
    save(out, **results, ints=ints, tensor=t.numpy(), same=np.array(same is t), bcast=bcast,
         obj=np.array(obj["out"]), obj_n=np.array(obj["n"]), metrics=np.array([metrics["correct"], metrics["seen"]]),
         size=np.array(n), local_rank=np.array(dist.get_local_rank()), backend=np.array(dist.get_backend()))


def device_arrays(out: str) -> None:
    """Device arrays through the MPI communicator (copied to the host and back), on the CPU "foreign" device
    whose arrays refuse implicit conversion to numpy as CuPy's do: all_reduce, and DDP + SyncBatchNorm."""
    import foreign_device

    from minires.backend import device_of, to_device, to_numpy

    foreign_device.register()
    dist.init()
    r = dist.get_rank()
    a = to_device(np.arange(4.0) * (r + 1), "foreign")
    dist.all_reduce(a)
    model = dist.DistributedDataParallel(dist.convert_sync_batchnorm(_tiny_net(sync=False))).to("foreign")
    x = mr.tensor(np.random.default_rng(r).normal(size=(4, 1, 6, 6)).astype(np.float32), device="foreign")
    model(x).sum().backward()
    model.sync_gradients()
    grads = {name: to_numpy(p.grad.data) for name, p in model.module.named_parameters()}
    save(out, reduced=to_numpy(a), device=np.array(device_of(a)), grad_device=np.array(model.module[0].weight.grad.device),
         **grads)


def nccl_smoke(out: str) -> None:
    """One process, one GPU: the NCCL communicator's collectives, and DDP + SyncBatchNorm on CUDA arrays."""
    from minires.backend import to_numpy

    comm = dist.init("nccl")
    a = mr.tensor(np.arange(4.0, dtype=np.float32), device="cuda")
    dist.all_reduce(a, "sum")
    dist.all_reduce(a, "mean")
    dist.broadcast(a, 0)
    metrics = dist.all_reduce_metrics({"seen": 3})  # host values go over MPI
    model = dist.DistributedDataParallel(_tiny_net(sync=True).to("cuda"))
    reference = _tiny_net(sync=False).to("cuda")
    reference.load_state_dict(model.module.state_dict())
    x = mr.tensor(np.random.default_rng(0).normal(size=(4, 1, 6, 6)).astype(np.float32), device="cuda")
    y, y_ref = model(x), reference(x)
    y.sum().backward()
    y_ref.sum().backward()
    model.sync_gradients()
    comm.barrier()
    save(out, a=a.numpy(), seen=np.array(metrics["seen"]), backend=np.array(dist.get_backend()), y=to_numpy(y.data),
         y_ref=to_numpy(y_ref.data), g=to_numpy(model.module[0].weight.grad.data),
         g_ref=to_numpy(reference[0].weight.grad.data))


def syncbn_grad(out: str) -> None:
    """SyncBatchNorm forward/backward on an uneven split (rank 0: 4 images, rank 1: 2) of one float64 batch."""
    dist.init()
    r, n = dist.get_rank(), dist.get_world_size()
    rng = np.random.default_rng(5)
    x_all = rng.normal(2.0, 3.0, size=(6, 3, 2, 2))
    weights = rng.normal(size=(6, 3, 2, 2))
    split = [0, 4, 6] if n == 2 else [0, 6]
    rows = slice(split[r], split[r + 1])
    bn = dist.SyncBatchNorm(3, momentum=0.5).double()
    bn.weight.data[...] = [1.5, -0.5, 2.0]
    bn.bias.data[...] = [0.1, 0.2, -0.3]
    x = mr.tensor(x_all[rows], requires_grad=True)
    y = bn(x)
    (y * mr.tensor(weights[rows])).sum().backward()
    save(out, y=y.numpy(), dx=x.grad.numpy(), dw=bn.weight.grad.numpy(), db=bn.bias.grad.numpy(),
         running_mean=bn.running_mean.numpy(), running_var=bn.running_var.numpy())


def _tiny_net(sync: bool) -> nn.Module:
    mr.manual_seed(1 + dist.get_rank())  # different initial weights per rank: DDP must broadcast rank 0's
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )  # fmt: skip
    return dist.convert_sync_batchnorm(model) if sync else model


def train(out: str, mode: str, global_batch: str = "16", epochs: str = "2") -> None:
    """SGD (momentum, weight decay) on 64 fixed random images, global batch 16: run alone or under mpiexec."""
    dist.init()
    n = dist.get_world_size()
    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.normal(size=(64, 1, 6, 6)).astype(np.float32), rng.integers(0, 3, size=64))
    batch = int(global_batch) // n
    model = dist.DistributedDataParallel(_tiny_net(sync=mode == "sync"))
    opt = optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-3)
    loader = DataLoader(data, batch, drop_last=True, prefetch=0, sampler=dist.DistributedSampler(data, seed=3))
    losses = []
    for epoch in range(int(epochs)):
        loader.set_epoch(epoch)
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            model.sync_gradients()
            opt.step()
            losses.append(loss.item())
    state = {k: v.numpy() for k, v in model.module.state_dict().items()}
    save(out, losses=np.array(losses), **state)


def evaluate_sharded(out: str) -> None:
    """minires-train's evaluation: each rank a disjoint part of the digits test set, the counts summed."""
    from types import SimpleNamespace

    from minires.data import get_dataset
    from minires.models import resnet20
    from minires.training.config import TrainConfig
    from minires.training.distributed import TrainingWorld
    from minires.training.evaluate import evaluate
    from minires.training.loaders import make_test_loader

    world = TrainingWorld(SimpleNamespace(device="cpu", out="unused", progress=False))
    test_set = get_dataset("digits", None, train=False)
    mr.manual_seed(0)
    model = resnet20(in_channels=1)
    loader = make_test_loader(TrainConfig(prefetch=0), world.test_shard(test_set))
    result = world.all_reduce_result(evaluate(model, loader, test_set.num_classes))
    save(out, confusion=result.confusion, loss=np.array(result.loss), shard=np.array(len(loader.dataset)))


def forgotten_sync(out: str) -> None:
    """Backward, step, then forward again without sync_gradients(): must raise (and so abort all ranks)."""
    dist.init()
    model = dist.DistributedDataParallel(nn.Linear(3, 2))
    x = mr.randn(4, 3)
    model(x).sum().backward()
    model(x)


def fail(out: str) -> None:
    """Rank 1 raises while rank 0 waits in an all-reduce that rank 1 never joins."""
    dist.init()
    dist.barrier()
    if dist.get_rank() == 1:
        raise ValueError("planted failure on rank 1")
    dist.all_reduce(np.zeros(3))
    save(out, reached=np.array(True))  # never: the abort ends rank 0 inside the all-reduce


def threads(out: str) -> None:
    """What init() left this rank to compute with: pool threads, BLAS threads, ranks on this machine."""
    from threadpoolctl import threadpool_info

    from minires.ops import _parallel

    dist.init()
    blas = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    save(out, pool=np.array(_parallel.threads()), blas=np.array(blas), local_size=np.array(dist.world().local_size),
         cores=np.array(len(os.sched_getaffinity(0))))


if __name__ == "__main__":
    scenario, out_dir, *rest = sys.argv[1:]
    {"collectives": collectives, "syncbn_grad": syncbn_grad, "train": train, "fail": fail,
     "forgotten_sync": forgotten_sync, "evaluate_sharded": evaluate_sharded,
     "device_arrays": device_arrays, "nccl_smoke": nccl_smoke, "threads": threads}[scenario](out_dir, *rest)
