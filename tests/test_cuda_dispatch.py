"""Dispatch of the fast BatchNorm kernels from ``batch_norm``, ``batch_norm_add_relu`` and the residual blocks.

On the CPU: the foreign test device runs the real dispatch with the kernels built by g++ (tests/cuda_host.py),
compared with the generic NumPy path on the "cpu" device. ``batch_norm_add_relu`` itself is checked against
the three ops it fuses and against finite differences.
"""

from __future__ import annotations

import numpy as np
import pytest
from cuda_host import host_kernels
from hypothesis import given
from hypothesis import strategies as st
from kernel_toolchains import require_host_compiler

import minires as mr
import minires.nn as nn
import minires.nn.functional as F
from minires.models.blocks import BasicBlock, Bottleneck, projection_shortcut
from minires.ops.cuda import fast_kernels_off


def _grads(tensors) -> list[np.ndarray]:
    return [t.grad.numpy() for t in tensors]


def _bn_run(device: str, x, w, b, rm, rv, training: bool, residual=None):
    """Forward + backward of batch_norm (or batch_norm_add_relu) on a device; outputs, grads, running stats."""
    ts = [mr.tensor(a, device=device, requires_grad=True) for a in (x, w, b)]
    stats = [mr.tensor(a.copy(), device=device) for a in (rm, rv)]
    if residual is None:
        y = F.batch_norm(ts[0], *stats, ts[1], ts[2], training=training, momentum=0.2)
    else:
        ts.append(mr.tensor(residual, device=device, requires_grad=True))
        y = F.batch_norm_add_relu(ts[0], ts[3], *stats, ts[1], ts[2], training=training, momentum=0.2)
    g = np.random.default_rng(9).normal(size=x.shape)
    (y * mr.tensor(g, device=device)).sum().backward()
    return [y.numpy(), *_grads(ts), *(s.numpy() for s in stats)]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (6, 5), (3, 2, 7)])
def test_batch_norm_dispatches_the_kernels_and_matches_the_generic_path(shape, fused, training) -> None:
    require_host_compiler()
    rng = np.random.default_rng(0)
    c = shape[1]
    x, residual = rng.normal(size=shape) * 3 + 1, (rng.normal(size=shape) if fused else None)
    w, b, rm, rv = rng.normal(size=c), rng.normal(size=c), rng.normal(size=c), rng.uniform(0.5, 2, size=c)
    want = _bn_run("cpu", x, w, b, rm, rv, training, residual)
    with host_kernels() as launcher:
        got = _bn_run("foreign", x, w, b, rm, rv, training, residual)
    # one forward and one backward launch are the first-use self-check's; eval's dx is a plain multiply
    assert launcher.launches.count("minires_bn_forward_f64") == 2
    assert launcher.launches.count("minires_bn_backward_f64") == (2 if training else 1)
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-10)


@given(
    shape=st.sampled_from([(3, 2, 4, 4), (5, 3), (2, 4, 3)]), training=st.booleans(), affine=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_batch_norm_add_relu_equals_the_three_ops(shape, training, affine, seed) -> None:
    rng = np.random.default_rng(seed)
    c = shape[1]
    x, r, g = rng.normal(size=shape), rng.normal(size=shape), rng.normal(size=shape)
    w, b = (rng.normal(size=c), rng.normal(size=c)) if affine else (None, None)
    results = []
    for fused in (True, False):
        xt, rt = mr.tensor(x, requires_grad=True), mr.tensor(r, requires_grad=True)
        params = [mr.tensor(a, requires_grad=True) for a in (w, b)] if affine else [None, None]
        rm, rv = mr.zeros(c, dtype=np.float64), mr.ones(c, dtype=np.float64)
        if fused:
            y = F.batch_norm_add_relu(xt, rt, rm, rv, *params, training=training, momentum=0.3)
        else:
            y = F.relu(F.batch_norm(xt, rm, rv, *params, training=training, momentum=0.3) + rt)
        (y * mr.tensor(g)).sum().backward()
        grads = [t.grad.numpy() for t in [xt, rt, *params] if t is not None]
        results.append([y.numpy(), *grads, rm.numpy(), rv.numpy()])
    for a, e in zip(*results):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_add_relu_gradcheck(training: bool) -> None:
    rng = np.random.default_rng(3)
    x = mr.tensor(rng.normal(size=(3, 2, 3, 3)), requires_grad=True)
    r = mr.tensor(rng.normal(size=(3, 2, 3, 3)) + 0.5, requires_grad=True)
    w, b = (mr.tensor(rng.normal(size=2), requires_grad=True) for _ in range(2))
    rm, rv = mr.tensor(rng.normal(size=2)), mr.tensor(rng.uniform(0.5, 2, size=2))
    assert mr.gradcheck(lambda *a: F.batch_norm_add_relu(*a[:2], rm, rv, *a[2:], training=training), (x, r, w, b))


def test_batch_norm_add_relu_refuses_a_residual_of_another_shape() -> None:
    message = r"batch_norm_add_relu: residual has shape \(2, 3, 4, 5\), expected the input's shape \(2, 3, 4, 4\)"
    with pytest.raises(ValueError, match=message):
        F.batch_norm_add_relu(mr.randn(2, 3, 4, 4), mr.randn(2, 3, 4, 5), None, None, training=True)


def _block_run(block: nn.Module, device: str, x: np.ndarray, training: bool) -> list[np.ndarray]:
    block = block.to(device, dtype=np.float64).train(training)
    xt = mr.tensor(x, device=device, requires_grad=True)
    y = block(xt)
    (y * y).sum().backward()
    return [y.numpy(), xt.grad.numpy()] + [p.grad.numpy() for p in block.parameters()] + [b.numpy() for b in block.buffers()]


def _blocks() -> list[tuple[str, nn.Module]]:
    mr.manual_seed(0)
    return [
        ("basic", BasicBlock(4, 4)),
        ("basic-projection", BasicBlock(3, 4, stride=2, downsample=projection_shortcut(3, 4, 2))),
        ("bottleneck", Bottleneck(8, 2)),
    ]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("index", [0, 1, 2], ids=[name for name, _ in _blocks()])
def test_residual_blocks_fuse_their_tail_on_the_gpu_path(index: int, training: bool) -> None:
    require_host_compiler()
    import copy

    _, block = _blocks()[index]
    x = np.random.default_rng(1).normal(size=(2, block.conv1.in_channels, 6, 6))
    want = _block_run(copy.deepcopy(block), "cpu", x, training)
    calls = []
    with host_kernels() as launcher:
        fused = copy.deepcopy(block)
        original = fused._last_norm().forward_add_relu
        fused._last_norm().forward_add_relu = lambda *a: calls.append(1) or original(*a)
        got = _block_run(fused, "foreign", x, training)
    assert calls == [1]  # the tail went through the fused op
    assert "minires_bn_forward_f64" in launcher.launches
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-10)


def test_a_hook_on_the_add_keeps_the_unfused_path() -> None:
    require_host_compiler()
    seen = []
    with host_kernels():
        block = BasicBlock(2, 2).to("foreign")
        block.add.register_forward_hook(lambda module, args, out: seen.append(tuple(a.shape for a in args)))
        x = mr.tensor(np.random.default_rng(2).normal(size=(2, 2, 4, 4)).astype(np.float32), device="foreign")
        assert not block._fused_tail(x)
        block(x)
        with fast_kernels_off():
            assert not BasicBlock(2, 2).to("foreign")._fused_tail(x)  # fast kernels off: never fused
        assert BasicBlock(2, 2).to("foreign")._fused_tail(x)
    assert seen == [((2, 2, 4, 4), (2, 2, 4, 4))]
    assert BasicBlock(2, 2)._fused_tail(mr.randn(1, 2, 4, 4))  # numpy arrays fuse too (minires.ops.batch_norm_cpu)
    with fast_kernels_off():
        assert not BasicBlock(2, 2)._fused_tail(mr.randn(1, 2, 4, 4))  # ... unless fast kernels are off


def test_cupy_launcher_compiles_each_family_once_and_launches_a_capped_grid(monkeypatch) -> None:
    """The GPU launcher against a fake ``cupy`` module: what it compiles, with which options, and the grid."""
    import sys
    import types

    from minires.ops.cuda import launch, sources

    compiled, launched = [], []

    class FakeRawModule:
        def __init__(self, code: str, options: tuple[str, ...]) -> None:
            compiled.append((code, options))

        def get_function(self, name: str):
            return lambda grid, block, args: launched.append((name, grid, block, len(args)))

    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(RawModule=FakeRawModule))
    launcher = launch.CupyLauncher()
    launcher("batch_norm", "minires_bn_forward_f32", 1000, (0,) * 11)
    launcher("batch_norm", "minires_bn_backward_f32", 10**9, (0,) * 10)
    launcher("im2col", "minires_im2col_f16", 1, (0,) * 16)
    assert compiled == [(sources.BATCH_NORM, launch.RAW_MODULE_OPTIONS), (sources.IM2COL, launch.RAW_MODULE_OPTIONS)]
    assert launched == [
        ("minires_bn_forward_f32", (4,), (256,), 11),  # ceil(1000 / 256) blocks
        ("minires_bn_backward_f32", (launch.MAX_BLOCKS,), (256,), 10),  # capped: the threads stride
        ("minires_im2col_f16", (1,), (256,), 16),
    ]
