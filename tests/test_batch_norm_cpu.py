"""The CPU fast path of BatchNorm (``minires/ops/batch_norm_cpu.py``) and the fused BN + ReLU / BN + add + ReLU ops.

Three oracles: a float64 NumPy formula written out here, the generic reference path (``fast_kernels_off``),
and finite differences (gradcheck / gradgradcheck). Small ``ROW_VALUES`` / ``BLOCK_BYTES`` make the
small test arrays span many rows and blocks (with a short last block), so the block loops and the
float64 accumulation across blocks are exercised, not just one block.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minires as mr
import minires.nn as nn
import minires.nn.functional as F
from minires.models import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from minires.models.blocks import norm_relu, projection_shortcut
from minires.ops import _procs, batch_norm_cpu
from minires.ops.cuda import fast_kernels_off
from minires.ops.layout import channels_last_dense

EPS = 1e-5
KINDS = ("bn", "bn_relu", "bn_add_relu")


def channels_last(a: np.ndarray) -> np.ndarray:
    """The same (N, C, *) values with (N, *spatial, C) memory."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)).transpose((0, a.ndim - 1) + tuple(range(1, a.ndim - 1)))


def in_layout(a: np.ndarray, last: bool) -> np.ndarray:
    return channels_last(a) if last else np.ascontiguousarray(a)


def formula(x, r, w, b, g, kind: str, stats: Any) -> dict[str, np.ndarray]:
    """relu(BN(x) + r) (or a part of it) and its gradients for an upstream gradient g, in float64, written out."""
    x, g = x.astype(np.float64), g.astype(np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    col = (1, -1) + (1,) * (x.ndim - 2)
    training = stats is None
    mean, var = (x.mean(axes), x.var(axes)) if training else stats
    invstd = 1 / np.sqrt(var + EPS)
    x_hat = (x - mean.reshape(col)) * invstd.reshape(col)
    z = x_hat * w.reshape(col) + b.reshape(col)
    if kind == "bn_add_relu":
        z = z + r
    gz = g * (z > 0) if kind != "bn" else g
    k = (w * invstd).reshape(col)
    if training:
        dx = k * (gz - gz.mean(axes, keepdims=True) - x_hat * (gz * x_hat).mean(axes, keepdims=True))
    else:
        dx = k * gz
    y = np.maximum(z, 0) if kind != "bn" else z
    terms = np.abs(k * gz).max()  # the size of dx's terms: dx itself may be far smaller (they cancel)
    return {"y": y, "z": z, "dx": dx, "dr": gz, "dw": (gz * x_hat).sum(axes), "db": gz.sum(axes), "mean": mean, "var": var,
            "dx_terms": terms}


def run_op(kind: str, x, r, w, b, g, training: bool, stats=None, momentum: float = 0.1) -> dict[str, Any]:
    """The op through nn.functional (float64 or float32 as given): y, gradients and running statistics."""
    xt, rt = mr.tensor(x, requires_grad=True), mr.tensor(r, requires_grad=True)
    wt, bt = (None, None) if w is None else (mr.tensor(w, requires_grad=True), mr.tensor(b, requires_grad=True))
    rm, rv = (None, None) if stats is None else (mr.tensor(stats[0].copy()), mr.tensor(stats[1].copy()))
    args = dict(training=training, momentum=momentum, eps=EPS)
    if kind == "bn":
        y = F.batch_norm(xt, rm, rv, wt, bt, **args)
    elif kind == "bn_relu":
        y = F.batch_norm_relu(xt, rm, rv, wt, bt, **args)
    else:
        y = F.batch_norm_add_relu(xt, rt, rm, rv, wt, bt, **args)
    (y * mr.tensor(g)).sum().backward()
    out = {"y": y.data, "dx": xt.grad.numpy(), "dr": None if rt.grad is None else rt.grad.numpy()}
    if wt is not None:
        out["dw"], out["db"] = wt.grad.numpy(), bt.grad.numpy()
    if rm is not None:
        out["running_mean"], out["running_var"] = rm.numpy(), rv.numpy()
    return out


@contextlib.contextmanager
def spy() -> Iterator[list[str]]:
    """The names of the fast path's entry points called inside the block, in order."""
    calls: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        for name in ("forward_train", "forward_eval", "backward"):
            original = getattr(batch_norm_cpu, name)

            def wrapped(*a: Any, _f: Any = original, _n: str = name, **kw: Any) -> Any:
                calls.append(_n)
                return _f(*a, **kw)

            mp.setattr(batch_norm_cpu, name, wrapped)
        yield calls


@contextlib.contextmanager
def rows_and_blocks(row_values: int, block_bytes: int, parallel_bytes: int | None = None) -> Iterator[None]:
    """Other row and block sizes inside the block (the row-length cache cleared on the way in and out);
    ``parallel_bytes`` given: arrays of that size or more split over the processes (0: all; the test asks
    for the ``three_processes`` fixture: two workers, started and ready)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batch_norm_cpu, "ROW_VALUES", row_values)
        mp.setattr(batch_norm_cpu, "BLOCK_BYTES", block_bytes)
        if parallel_bytes is not None:
            mp.setattr(_procs, "MIN_SPLIT_BYTES", parallel_bytes)
            mp.setattr(batch_norm_cpu, "SPLIT_BYTES", parallel_bytes)
        batch_norm_cpu.row_length.cache_clear()
        try:
            yield
        finally:
            batch_norm_cpu.row_length.cache_clear()


@pytest.fixture
def small_rows() -> Iterator[None]:
    """Rows of at most 12 values and blocks of 3 rows or fewer: many blocks even for small arrays."""
    with rows_and_blocks(12, 3 * 12 * 4):
        yield



cases = st.fixed_dictionaries(
    {
        "shape": st.tuples(st.integers(1, 4), st.integers(1, 5)).flatmap(
            lambda nc: st.lists(st.integers(1, 4), min_size=0, max_size=2).map(lambda sp: (nc[0], nc[1], *sp))
        ),
        "kind": st.sampled_from(KINDS),
        "training": st.booleans(),
        "affine": st.booleans(),
        "x_last": st.booleans(),
        "r_last": st.booleans(),
        "g_last": st.booleans(),
        "seed": st.integers(0, 2**16),
        "rows": st.sampled_from(
            [(12, 3 * 12 * 8), (12, 2 * 12 * 8, 0), (40, 100), (batch_norm_cpu.ROW_VALUES, batch_norm_cpu.BLOCK_BYTES)]
        ),
    }
)


def _data(case: dict[str, Any], dtype: Any = np.float64) -> tuple[Any, ...]:
    """x (channels-last or NCHW, with per-channel offsets), residual, weight, bias, g, running statistics."""
    shape, c = case["shape"], case["shape"][1]
    rng = np.random.default_rng(case["seed"])
    col = (1, -1) + (1,) * (len(shape) - 2)
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3, c).reshape(col) + rng.uniform(-4, 4, c).reshape(col)
    r, g = rng.standard_normal(shape), rng.standard_normal(shape)
    w, b = (rng.uniform(0.5, 2, c) * rng.choice([-1, 1], c), rng.standard_normal(c)) if case["affine"] else (None, None)
    stats = (rng.standard_normal(c), rng.uniform(0.5, 2, c))
    x, r, g = (in_layout(a.astype(dtype), last) for a, last in ((x, case["x_last"]), (r, case["r_last"]), (g, case["g_last"])))
    return x, r, w, b, g, stats


@settings(max_examples=60, deadline=None)
@given(case=cases)
def test_the_fast_path_equals_the_formula_and_the_reference_path(case: dict[str, Any], three_processes: None) -> None:
    """Any layout of x, residual and gradient; row and block sizes small (many blocks) or the defaults."""
    with rows_and_blocks(*case["rows"]):
        _fast_path_equals_formula_and_reference(case)


def _fast_path_equals_formula_and_reference(case: dict[str, Any]) -> None:
    x, r, w, b, g, stats = _data(case)
    assume(not case["training"] or x.size // x.shape[1] > 1)
    kind, training = case["kind"], case["training"]
    ones = np.ones(x.shape[1])
    want = formula(x, r, ones if w is None else w, 0 * ones if b is None else b, g, kind, None if training else stats)
    assume(kind == "bn" or np.abs(want["z"]).min() > 1e-9)  # off the ReLU's kink
    with spy() as calls:
        got = run_op(kind, x, r, w, b, g, training, stats, momentum=0.3)
    assert calls.count("backward") == int(channels_last_dense(x))  # the fast path ran exactly for channels-last x
    with fast_kernels_off():
        ref = run_op(kind, x, r, w, b, g, training, stats, momentum=0.3)
    for name in got:
        if got[name] is None:
            assert ref[name] is None and kind != "bn_add_relu"
            continue
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-10, atol=1e-12, err_msg=name)
        if name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-9, atol=1e-11, err_msg=name)
    if training:  # the running statistics took the batch's (unbiased var) with momentum 0.3
        m = x.size // x.shape[1]
        np.testing.assert_allclose(got["running_mean"], 0.7 * stats[0] + 0.3 * want["mean"], rtol=1e-12)
        np.testing.assert_allclose(got["running_var"], 0.7 * stats[1] + 0.3 * want["var"] * m / (m - 1), rtol=1e-12)
    if case["x_last"] and x.ndim > 2:
        assert channels_last_dense(got["y"]) and channels_last_dense(got["dx"])  # outputs keep the input's layout


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_parts_in_three_processes_give_the_formula(kind: str, training: bool, monkeypatch: pytest.MonkeyPatch,
                                                   three_processes: None) -> None:
    """Rows split into three parts over two worker processes and this one (sums of the parts added up),
    small blocks within each."""
    split = []
    run = _procs.Plan.run
    monkeypatch.setattr(_procs.Plan, "run", lambda self, *a, **k: (split.append(self.parts), run(self, *a, **k))[1])
    case = {"shape": (5, 3, 4, 3), "kind": kind, "training": training, "affine": True, "seed": 7,
            "x_last": True, "r_last": True, "g_last": True}
    x, r, w, b, g, stats = _data(case)
    want = formula(x, r, w, b, g, kind, None if training else stats)
    assert kind == "bn" or np.abs(want["z"]).min() > 1e-6
    with rows_and_blocks(12, 2 * 12 * 8, parallel_bytes=0), spy() as calls:
        got = run_op(kind, x, r, w, b, g, training, stats)
    assert calls == ["forward_train" if training else "forward_eval", "backward"]
    assert split and set(split) == {3}  # every pass went to the workers
    for name in ("y", "dx", "dr", "dw", "db"):
        if got[name] is not None:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-12, err_msg=name)


@settings(max_examples=30, deadline=None)
@given(case=cases)
def test_float32_on_the_fast_path_is_float32_accurate(case: dict[str, Any], three_processes: None) -> None:
    with rows_and_blocks(*case["rows"]):
        _float32_accurate(dict(case, x_last=True))


def _float32_accurate(case: dict[str, Any]) -> None:
    x, r, w, b, g, stats = _data(case, np.float32)
    assume(not case["training"] or x.size // x.shape[1] > 1)
    kind, training = case["kind"], case["training"]
    c = x.shape[1]
    w, b = (np.ones(c, np.float32), np.zeros(c, np.float32)) if w is None else (w.astype(np.float32), b.astype(np.float32))
    stats = tuple(a.astype(np.float32) for a in stats)
    stats64 = None if training else tuple(a.astype(np.float64) for a in stats)
    want = formula(x, r, w.astype(np.float64), b.astype(np.float64), g, kind, stats64)
    assume(kind == "bn" or np.abs(want["z"]).min() > 1e-3)
    got = run_op(kind, x, r, w, b, g, training, stats)
    for name in ("y", "dx", "dr", "dw", "db"):
        if name in got and got[name] is not None:
            assert got[name].dtype == np.float32
            scale = np.abs(want[name]).max() + (want["dx_terms"] if name == "dx" else 1)
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_a_mean_a_thousand_times_the_spread_keeps_float32_accuracy(kind: str, small_rows: None) -> None:
    """Two-pass statistics: E[x^2] - E[x]^2 in float32 would lose every digit of the variance here."""
    rng = np.random.default_rng(3)
    shape = (16, 3, 6, 7)
    spread = rng.standard_normal(shape)
    r, g = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    w, b = np.array([1.5, -0.5, 1.0], np.float32), np.array([0.1, 0.2, -0.3], np.float32)
    for _ in range(20):  # move the few values next to the ReLU's kink away from it
        x = channels_last((1000.0 * np.array([1.0, -2.0, 3.0]).reshape(1, 3, 1, 1) + spread).astype(np.float32))
        want = formula(x, r, w.astype(np.float64), b.astype(np.float64), g, kind, None)  # float64 from the same float32 x
        near = np.abs(want["z"]) < 1e-2
        if kind == "bn" or not near.any():
            break
        spread[near] += 0.05
    assert kind == "bn" or np.abs(want["z"]).min() > 1e-2
    got = run_op(kind, x, r, w, b, g, True, (np.zeros(3, np.float32), np.ones(3, np.float32)), momentum=1.0)
    m = x.size // 3
    np.testing.assert_allclose(got["running_mean"], want["mean"], rtol=1e-6)
    np.testing.assert_allclose(got["running_var"], want["var"] * m / (m - 1), rtol=1e-4)
    np.testing.assert_allclose(got["y"], want["y"], atol=2e-4)
    np.testing.assert_allclose(got["dx"], want["dx"], atol=2e-4 * np.abs(want["dx"]).max())
    np.testing.assert_allclose(got["dw"], want["dw"], rtol=1e-3, atol=1e-2)


def _f64(shape: tuple[int, ...], seed: int) -> mr.Tensor:
    return mr.tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("last", [True, False], ids=["channels-last", "nchw"])
@pytest.mark.parametrize("kind", ["bn_relu", "bn_add_relu"])
def test_fused_functions_gradcheck_and_gradgradcheck(kind: str, last: bool, training: bool, small_rows: None) -> None:
    stats = (None, None) if training else (mr.tensor(np.array([0.3, -0.2, 0.1])), mr.tensor(np.array([0.8, 1.7, 1.1])))
    x = _f64((3, 4, 2, 3), 0) if last else _f64((3, 3, 4, 2), 0)  # (N, H, W, C) memory when last, permuted below
    res = _f64((3, 3, 4, 2), 1)
    w, b = mr.tensor(np.array([0.9, -1.2, 1.1]), requires_grad=True), mr.tensor(np.array([0.1, -0.3, 0.2]), requires_grad=True)

    def nchw(a: mr.Tensor) -> mr.Tensor:
        return a.permute(0, 3, 1, 2) if last else a

    def fn(a: mr.Tensor, rr: mr.Tensor, ww: mr.Tensor, bb: mr.Tensor) -> mr.Tensor:
        if kind == "bn_relu":
            return F.batch_norm_relu(nchw(a), *stats, ww, bb, training=training) ** 2 + 0 * rr.sum()
        return F.batch_norm_add_relu(nchw(a), rr, *stats, ww, bb, training=training) ** 2

    pre = F.batch_norm(nchw(x), *stats, w, b, training=training).detach().numpy() + (0 if kind == "bn_relu" else res.numpy())
    assert np.abs(pre).min() > 1e-3  # these fixed inputs sit off the ReLU's kink
    with spy() as calls:
        assert mr.gradcheck(fn, [x, res, w, b])
        assert mr.gradgradcheck(fn, [x, res, w, b])
    assert ("backward" in calls) == last


@pytest.mark.parametrize("kind", ["bn_relu", "bn_add_relu"])
def test_fused_ops_equal_the_separate_modules(kind: str) -> None:
    """Value, gradients and running statistics of F.batch_norm_relu / _add_relu and of BatchNorm2d -> (+) -> ReLU."""
    rng = np.random.default_rng(5)
    x, r, g = (channels_last(rng.standard_normal((4, 3, 5, 5)).astype(np.float32)) for _ in range(3))
    bn_a, bn_b = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
    for p in (bn_a.weight, bn_b.weight):
        p.data[:] = [0.5, -1.0, 2.0]
    for training in (True, False, True):
        bn_a.train(training), bn_b.train(training)
        xa, xb, ra, rb = (mr.tensor(a, requires_grad=True) for a in (x, x, r, r))
        ya = bn_a.forward_relu(xa) if kind == "bn_relu" else bn_a.forward_add_relu(xa, ra)
        yb = F.relu(bn_b(xb) + (0 if kind == "bn_relu" else rb))
        for y in (ya, yb):
            (y * mr.tensor(g)).sum().backward()
        np.testing.assert_allclose(ya.numpy(), yb.numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(xa.grad.numpy(), xb.grad.numpy(), rtol=1e-5, atol=1e-5)
        if kind == "bn_add_relu":
            np.testing.assert_allclose(ra.grad.numpy(), rb.grad.numpy(), rtol=1e-6, atol=1e-6)
        for a, b in zip(list(bn_a.parameters()) + list(bn_a.buffers()), list(bn_b.parameters()) + list(bn_b.buffers())):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
            assert (a.grad is None) == (b.grad is None)
            if a.grad is not None:
                np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-5, atol=1e-5)
    assert int(bn_a.num_batches_tracked.item()) == 2


def fused_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records "relu" / "add" each time a BatchNorm2d runs its fused BN + ReLU / BN + add + ReLU."""
    calls: list[str] = []
    relu, add_relu = nn.BatchNorm2d.forward_relu, nn.BatchNorm2d.forward_add_relu
    monkeypatch.setattr(nn.BatchNorm2d, "forward_relu", lambda self, a: calls.append("relu") or relu(self, a))
    monkeypatch.setattr(nn.BatchNorm2d, "forward_add_relu", lambda self, a, r: calls.append("add") or add_relu(self, a, r))
    return calls


BLOCKS = {
    "basic": lambda: BasicBlock(4, 4),
    "basic-projection": lambda: BasicBlock(3, 4, stride=2, downsample=projection_shortcut(3, 4, 2)),
    "bottleneck": lambda: Bottleneck(8, 2),
    "preact-basic": lambda: PreActBasicBlock(4, 4),
    "preact-bottleneck": lambda: PreActBottleneck(8, 2),
}


def _block_run(block: nn.Module, x: np.ndarray, training: bool) -> list[np.ndarray]:
    block = block.train(training)
    xt = mr.tensor(x, requires_grad=True)
    y = block(xt)
    (y * y).sum().backward()
    grads = [p.grad.numpy() for p in block.parameters()]
    return [y.numpy(), xt.grad.numpy(), *grads, *(b.numpy() for b in block.buffers())]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_blocks_fuse_on_the_cpu_and_give_what_the_separate_ops_give(name: str, training: bool, monkeypatch) -> None:
    mr.manual_seed(0)
    block = BLOCKS[name]()
    x = np.random.default_rng(1).normal(size=(2, block.conv1.in_channels, 6, 6))
    block = block.to(dtype=np.float64)
    with fast_kernels_off():  # the reference: separate modules, generic kernels
        want = _block_run(copy.deepcopy(block), x, training)
    fused = fused_calls(monkeypatch)
    got = _block_run(copy.deepcopy(block), x, training)
    relus = {"basic": 1, "basic-projection": 1, "bottleneck": 2, "preact-basic": 2, "preact-bottleneck": 3}[name]
    assert fused.count("relu") == relus and fused.count("add") == (0 if name.startswith("preact") else 1)
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-10)


def _hook(kind: str, module: nn.Module, seen: list[Any]) -> None:
    if kind == "forward":
        module.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    elif kind == "pre":
        module.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    else:
        module.register_full_backward_hook(lambda m, gin, gout: seen.append(gout[0].shape))


@pytest.mark.parametrize("hook", ["forward", "pre", "backward"])
@pytest.mark.parametrize("where", ["bn1", "relu", "bn2", "add"])
def test_hooks_keep_the_unfused_path_and_see_what_it_gives(where: str, hook: str, monkeypatch) -> None:
    mr.manual_seed(0)
    block = BasicBlock(2, 2)
    x = np.random.default_rng(2).normal(size=(2, 2, 4, 4)).astype(np.float32)
    plain = copy.deepcopy(block)
    seen: list[Any] = []
    _hook(hook, getattr(block, where), seen)
    fused = fused_calls(monkeypatch)
    got = _block_run(block, x, True)
    # a hook on bn1 or relu keeps bn1 + relu apart; on relu, bn2 or add the tail too (relu serves both)
    assert ("relu" in fused) == (where in ("bn2", "add"))
    assert ("add" in fused) == (where == "bn1")
    assert seen  # the hook ran
    with fast_kernels_off():
        want = _block_run(plain, x, True)
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


def test_norm_relu_falls_back_for_other_layers() -> None:
    """Only a plain BatchNorm2d followed by a plain nn.ReLU fuses; a subclass or another norm runs its own forward."""

    class Doubling(nn.BatchNorm2d):
        def forward(self, input):  # noqa: A002
            return super().forward(input) * 2

    x = mr.tensor(channels_last(np.random.default_rng(4).normal(size=(2, 3, 4, 4)).astype(np.float32)))
    y = norm_relu(Doubling(3), nn.ReLU(), x)
    np.testing.assert_allclose(y.numpy(), F.relu(F.batch_norm(x, None, None, training=True) * 2).numpy(), rtol=1e-6, atol=1e-6)
    g = nn.GroupNorm(1, 3)
    np.testing.assert_allclose(norm_relu(g, nn.ReLU(), x).numpy(), F.relu(g(x)).numpy(), rtol=1e-6)


@settings(max_examples=50, deadline=None)
@given(pixels=st.integers(1, 5000), channels=st.integers(1, 300), target=st.sampled_from([1, 12, 64, 1 << 14]))
def test_rows_tile_the_memory_exactly(pixels: int, channels: int, target: int) -> None:
    with rows_and_blocks(target, batch_norm_cpu.BLOCK_BYTES):
        length = batch_norm_cpu.row_length(pixels, channels)
    assert length % channels == 0 and pixels % (length // channels) == 0
    assert length <= max(target, channels)
    j = length // channels  # the largest such divisor: no divisor of pixels between j and the cap
    cap = max(1, min(pixels, target // channels))
    assert not any(pixels % d == 0 for d in range(j + 1, cap + 1))


@pytest.mark.parametrize(
    "x",
    [
        np.zeros((2, 3, 4, 4), np.float32),  # NCHW memory
        channels_last(np.zeros((2, 3, 4, 4), np.float16)),  # float16
        channels_last(np.zeros((2, 3, 4, 4)))[:, :, ::2],  # strided: not dense
        channels_last(np.zeros((2, batch_norm_cpu.MAX_CHANNELS + 1, 4, 4), np.float32)),  # many channels
    ],
    ids=["nchw", "float16", "strided", "wide"],
)
def test_the_fast_path_takes_only_dense_channels_last_float32_and_float64(x: np.ndarray) -> None:
    assert not batch_norm_cpu.usable(x)
    assert batch_norm_cpu.usable(channels_last(np.zeros((2, 3, 4, 4), np.float32)))
    assert batch_norm_cpu.usable(channels_last(np.zeros((2, batch_norm_cpu.MAX_CHANNELS, 4, 4), np.float32)))
    assert batch_norm_cpu.usable(np.zeros((5, 3)))  # (N, C) memory is channels-last too
    with fast_kernels_off():
        assert not batch_norm_cpu.usable(channels_last(np.zeros((2, 3, 4, 4), np.float32)))
