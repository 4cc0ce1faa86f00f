"""The chunked CPU im2col convolution (minires/ops/conv_chunked.py) against the whole-batch reference path.

Both compute the same sums in a different grouping, so float64 results agree to rounding (1e-12 relative).
Chunks are forced down to one sample and the pool to two threads, so several chunks run side by side.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minires as mr
from minires import backends
from minires.ops import _parallel, conv_chunked
from minires.ops.conv import conv2d, conv_from_columns, grad_matrix, group_columns, input_grad_from, weight_grad_from, weight_matrix
from minires.ops.geometry import Window2d
from minires.testing import conv_configs

FIXTURE_OK = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # the fixture only patches settings


@pytest.fixture
def many_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conv_chunked, "_target", lambda weight_bytes: 1)  # one sample per chunk
    monkeypatch.setenv("MINIRES_NUM_THREADS", "2")


def _reference(x, w, b, g, cfg):
    """Forward and the three gradients by the whole-batch functions of minires/ops/conv.py."""
    window = Window2d.of("conv2d", x.shape[2:], w.shape[2:], cfg.stride, cfg.padding, cfg.dilation)
    cols, wmat = group_columns(x, window, cfg.groups), weight_matrix(w)
    gmat = grad_matrix(g)
    return (
        conv_from_columns(cols, wmat, x.shape[0], window, b),
        input_grad_from(gmat, wmat, x.shape, window, cfg.groups),
        weight_grad_from(cols, gmat, w.shape),
        gmat.sum(axis=0),
    )


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@settings(FIXTURE_OK, max_examples=60)
@given(cfg=conv_configs(max_batch=4, max_channels=6, max_groups=3, max_size=9), seed=st.integers(0, 2**16))
def test_chunked_matches_the_whole_batch_path(cfg, seed, many_chunks):
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal(cfg.input_shape), rng.standard_normal(cfg.weight_shape), rng.standard_normal(cfg.out_channels)
    g = rng.standard_normal(cfg.output_shape)
    xt, wt, bt = (mr.tensor(a, requires_grad=True) for a in (x, w, b))
    with backends.use_conv_algorithm("im2col"):
        y = conv2d(xt, wt, bt, **cfg.kwargs)
        assert y.grad_fn.ctx.chunked
        y.backward(mr.tensor(g))
    expected = _reference(x, w, b, g, cfg)
    for what, got, want in zip(("output", "input grad", "weight grad", "bias grad"), (y, xt.grad, wt.grad, bt.grad), expected):
        assert got.shape == want.shape, what
        assert _rel(got.numpy(), np.asarray(want)) < 1e-12, f"{what}: relative error {_rel(got.numpy(), np.asarray(want)):.1e}"


@settings(FIXTURE_OK, max_examples=15)
@given(cfg=conv_configs(max_batch=3, max_channels=4, max_size=6), seed=st.integers(0, 2**16))
def test_chunked_gradcheck(cfg, seed, many_chunks):
    rng = np.random.default_rng(seed)
    inputs = [mr.tensor(rng.standard_normal(s), requires_grad=True) for s in (cfg.input_shape, cfg.weight_shape, (cfg.out_channels,))]
    with backends.use_conv_algorithm("im2col"):
        assert mr.gradcheck(lambda a, k, bb: conv2d(a, k, bb, **cfg.kwargs), inputs)


def test_float32_chunks_agree_with_float64(many_chunks):
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((5, 6, 11, 11)), rng.standard_normal((8, 6, 3, 3))
    with backends.use_conv_algorithm("im2col"):
        y64 = conv2d(mr.tensor(x), mr.tensor(w), stride=2, padding=1).numpy()
        y32 = conv2d(mr.tensor(x.astype(np.float32)), mr.tensor(w.astype(np.float32)), stride=2, padding=1).numpy()
    assert y32.dtype == np.float32
    assert _rel(y32, y64) < 1e-5


def test_backward_keeps_x_not_the_columns():
    """The chunked path saves the input (already alive) instead of a kH*kW times larger column matrix."""
    x = mr.tensor(np.ones((4, 8, 10, 10)), requires_grad=True)
    w = mr.tensor(np.ones((8, 8, 3, 3)), requires_grad=True)
    with backends.use_conv_algorithm("im2col"):
        y = conv2d(x, w, stride=2, padding=1)
    saved = [a for a in y.grad_fn.ctx.saved_tensors if a is not None]
    assert saved and max(a.size for a in saved) <= x.numel()
    assert any(a is x.data for a in saved)


def test_nested_over_batch_runs_in_the_calling_worker(monkeypatch: pytest.MonkeyPatch):
    """A chunk that itself calls over_batch (the chunked conv building its columns) runs the inner
    chunks in its own thread instead of waiting on the busy pool (which could deadlock)."""
    monkeypatch.setenv("MINIRES_NUM_THREADS", "2")

    def outer(a: int, b: int) -> list[tuple[int, int]]:
        return _parallel.over_batch(np, 6, 1, lambda c, d: (a + c, a + d), 1)

    results = _parallel.over_batch(np, 8, 1, outer, 1)
    assert results == [[(a + c, a + c + 1) for c in range(6)] for a in range(8)]
