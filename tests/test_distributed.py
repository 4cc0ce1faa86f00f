"""minires.distributed in one process: SyncBatchNorm's gradients and its equality with BatchNorm, the
sampler's coverage, bucket packing, the DDP protocol and launcher detection. The multi-process checks
(mpiexec, 2 ranks) are in test_distributed_mpi.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minires as mr
import minires.distributed as dist
import minires.nn as nn
from minires.data import DataLoader
from minires.data.dataset import ArrayDataset
from minires.distributed.buckets import make_buckets
from minires.distributed.sync_batchnorm import sync_batch_norm


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch):
    """These tests run as one process, whatever launched pytest."""
    for name in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMIX_SIZE"):
        monkeypatch.delenv(name, raising=False)
    dist.destroy()
    yield
    dist.destroy()


# ----- SyncBatchNorm ---------------------------------------------------------------------------------
@given(n=st.integers(1, 4), c=st.integers(1, 3), hw=st.integers(1, 3), affine=st.booleans(), seed=st.integers(0, 99))
def test_sync_batch_norm_gradcheck(n, c, hw, affine, seed):
    if n * hw * hw < 2:
        n = 2
    rng = np.random.default_rng(seed)
    x = mr.tensor(rng.normal(1.0, 2.0, size=(n, c, hw, hw)), requires_grad=True)
    w = mr.tensor(rng.normal(size=c), requires_grad=True) if affine else None
    b = mr.tensor(rng.normal(size=c), requires_grad=True) if affine else None
    inputs = (x, w, b) if affine else (x,)
    assert mr.gradcheck(lambda x, w=None, b=None: sync_batch_norm(x, None, None, w, b), inputs)


def test_sync_batch_norm_in_one_process_is_batch_norm():
    """Forward, running statistics and all three gradients against nn.BatchNorm2d (a separate implementation)."""
    rng = np.random.default_rng(0)
    x_np = rng.normal(3.0, 2.0, size=(5, 4, 3, 3)).astype(np.float32)
    g_np = rng.normal(size=x_np.shape).astype(np.float32)
    results = []
    for layer in (nn.BatchNorm2d(4, momentum=0.3), dist.SyncBatchNorm(4, momentum=0.3)):
        layer.weight.data[...] = [1.0, 2.0, -1.0, 0.5]
        layer.bias.data[...] = [0.0, 0.1, 0.2, 0.3]
        x = mr.tensor(x_np, requires_grad=True)
        for _ in range(2):
            y = layer(x)
        (y * mr.tensor(g_np)).sum().backward()
        layer.eval()
        y_eval = layer(mr.tensor(x_np))
        results.append([y.numpy(), x.grad.numpy(), layer.weight.grad.numpy(), layer.bias.grad.numpy(),
                        layer.running_mean.numpy(), layer.running_var.numpy(), y_eval.numpy(),
                        layer.num_batches_tracked.numpy()])
    for ours, reference in zip(results[1], results[0]):
        np.testing.assert_allclose(ours, reference, rtol=2e-5, atol=2e-6)


def test_convert_sync_batchnorm_shares_parameters_and_keeps_keys():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Sequential(nn.BatchNorm1d(3, affine=False)))
    model.eval()
    weight, running = model[1].weight, model[1].running_mean
    keys = list(model.state_dict())
    converted = dist.convert_sync_batchnorm(model)
    assert isinstance(converted[1], dist.SyncBatchNorm) and isinstance(converted[2][0], dist.SyncBatchNorm)
    assert converted[1].weight is weight and converted[1].running_mean is running
    assert converted[2][0].weight is None and not converted[1].training
    assert list(converted.state_dict()) == keys
    bn = nn.BatchNorm2d(2)
    assert isinstance(dist.convert_sync_batchnorm(bn), dist.SyncBatchNorm)


def test_sync_batch_norm_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        dist.SyncBatchNorm(2)(mr.randn(1, 2))
    with pytest.raises(ValueError, match="at least 2D"):
        dist.SyncBatchNorm(2)(mr.randn(2))
    with pytest.raises(ValueError, match=r"sync_batch_norm: weight has shape \(3,\), expected \(2,\)"):
        sync_batch_norm(mr.randn(4, 2), None, None, mr.ones(3))


# ----- DistributedSampler -----------------------------------------------------------------------------
@given(n=st.integers(0, 40), replicas=st.integers(1, 5), seed=st.integers(0, 5), epoch=st.integers(0, 3),
       shuffle=st.booleans(), drop_last=st.booleans())  # fmt: skip
def test_sampler_covers_every_example_once_per_epoch(n, replicas, seed, epoch, shuffle, drop_last):
    shares = []
    for rank in range(replicas):
        sampler = dist.DistributedSampler(range(n), replicas, rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
        shares.append(list(sampler))
        assert len(shares[-1]) == len(sampler)
    assert len({len(s) for s in shares}) == 1  # equal shares: every rank runs the same number of steps
    counts = np.bincount(np.array(sum(shares, []), dtype=np.int64), minlength=n)
    if drop_last:
        assert counts.max(initial=0) <= 1 and counts.sum() == (n // replicas) * replicas
    elif n:
        padding = -n % replicas
        assert counts.min() >= 1 and counts.sum() == n + padding  # everything once, the padding repeated
        assert (counts > 1).sum() <= padding


def test_sampler_order_depends_on_seed_plus_epoch_and_is_shared_by_ranks():
    a = dist.DistributedSampler(range(20), 2, 0, seed=1)
    b = dist.DistributedSampler(range(20), 2, 1, seed=1)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert sorted(first + list(b)) == list(range(20))  # both ranks cut the same permutation
    assert first == np.random.default_rng(1).permutation(20)[0::2].tolist()
    with pytest.raises(ValueError, match="rank must be in"):
        dist.DistributedSampler(range(4), 2, 2)


def test_loader_with_a_sampler_takes_its_order_and_length():
    data = ArrayDataset(np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1), np.arange(10))
    seen = []
    for rank in range(2):
        loader = DataLoader(data, 2, prefetch=0, sampler=dist.DistributedSampler(data, 2, rank, seed=4))
        loader.set_epoch(3)
        assert len(loader) == 3
        order = [int(v) for _, y in loader for v in y.numpy()]
        reference = dist.DistributedSampler(data, 2, rank, seed=4)
        reference.set_epoch(3)  # the loader passes its epoch on to the sampler
        assert order == list(reference) != list(dist.DistributedSampler(data, 2, rank, seed=4))
        seen += order
    assert sorted(seen) == list(range(10))
    with pytest.raises(ValueError, match="mutually exclusive"):
        DataLoader(data, 2, shuffle=True, sampler=dist.DistributedSampler(data, 1, 0))


# ----- buckets, collectives and DDP in one process ---------------------------------------------------
def test_buckets_keep_order_split_at_the_cap_and_dtype():
    ts = [mr.ones(3), mr.ones(5), mr.ones(2, dtype=mr.float64), mr.ones(4)]
    buckets = make_buckets(ts, cap_bytes=32)
    assert [[t.numel() for t in b.tensors] for b in buckets] == [[3, 5], [2], [4]]
    flat = buckets[0].pack([np.arange(3.0), None])
    np.testing.assert_array_equal(flat, [0, 1, 2, 0, 0, 0, 0, 0])
    assert [v.shape for v in buckets[0].views()] == [(3,), (5,)]


def test_single_process_group_collectives_are_the_identity():
    assert dist.init() is dist.init("single")
    assert (dist.get_rank(), dist.get_world_size(), dist.get_backend()) == (0, 1, "single")
    a = np.arange(4.0)
    for op in ("sum", "mean", "max", "min"):
        assert dist.all_reduce(a, op) is a
    np.testing.assert_array_equal(a, np.arange(4.0))
    assert dist.broadcast_object({"a": [1]}) == {"a": [1]}
    assert dist.all_reduce_metrics({"x": 2.5}) == {"x": 2.5}
    with pytest.raises(ValueError, match="unknown op"):
        dist.all_reduce(a, "prod")
    with pytest.raises(TypeError, match="op='mean' needs a floating-point"):
        dist.all_reduce(np.arange(3), "mean")
    with pytest.raises(ValueError, match="unknown backend"):
        dist.init("gloo")
    with pytest.raises(RuntimeError, match="cannot switch"):
        dist.init("mpi")


def test_ddp_catches_a_forgotten_sync_and_allows_no_sync():
    model = dist.DistributedDataParallel(nn.Linear(3, 2))
    x = mr.randn(4, 3)
    with model.no_sync():
        model(x).sum().backward()
        model(x).sum().backward()  # accumulating: no error
    model(x).sum().backward()
    with pytest.raises(RuntimeError, match="never averaged across the ranks"):
        model(x)
    model.sync_gradients()
    model(x)
    assert list(model.state_dict()) == ["module.weight", "module.bias"]


def test_launcher_detection_and_missing_init(monkeypatch):
    assert not dist.launched_by_mpi() and dist.launched_world_size() is None
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "3")
    assert dist.launched_world_size() == 3
    with pytest.raises(RuntimeError, match="init\\(\\) was not called"):
        dist.get_rank()
    with pytest.raises(RuntimeError, match="backend 'single' asked for, but mpiexec started 3 processes"):
        dist.init("single")
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE")
    monkeypatch.setenv("SLURM_NTASKS", "4")  # a batch job without srun's rank variables is one process
    assert dist.launched_world_size() is None
