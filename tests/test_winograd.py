"""Winograd F(2x2, 3x3) convolution against the im2col reference; the algorithm switch and its rule."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minires as mr
from minires import backends
from minires.backend import to_numpy
from minires.ops import winograd
from minires.ops.conv import conv2d

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)


@st.composite
def winograd_cases(draw: st.DrawFn, max_size: int = 9, max_channels: int = 5, symmetric: bool = False) -> tuple:
    """(N, C, O, H, W, pads) for a 3x3 stride-1 conv Winograd computes: pads 0..2 (top, bottom, left, right), odd/even outputs."""
    if symmetric:
        ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        pads = (ph, ph, pw, pw)
    else:
        pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    h = draw(st.integers(max(1, 3 - pads[0] - pads[1]), max_size))
    w = draw(st.integers(max(1, 3 - pads[2] - pads[3]), max_size))
    return (draw(st.integers(1, 3)), draw(st.integers(1, max_channels)), draw(st.integers(1, max_channels)), h, w, pads)


def _conv_with(algorithm: str, x, w, b, padding, device, g):
    """Forward and all three gradients of conv2d with ``algorithm`` forced (raw numpy results)."""
    xt, wt = mr.tensor(x, device=device, requires_grad=True), mr.tensor(w, device=device, requires_grad=True)
    bt = mr.tensor(b, device=device, requires_grad=True)
    with backends.use_conv_algorithm(algorithm):
        y = conv2d(xt, wt, bt, padding=padding)
        y.backward(mr.tensor(g, device=device))
    return [to_numpy(a) for a in (y.data, xt.grad.data, wt.grad.data, bt.grad.data)]


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _draw_arrays(case, dtype, seed):
    n, c, o, h, w, pads = case
    rng = np.random.default_rng(seed)
    oh, ow = h + pads[0] + pads[1] - 2, w + pads[2] + pads[3] - 2
    return [rng.standard_normal(s).astype(dtype) for s in ((n, c, h, w), (o, c, 3, 3), (o,), (n, o, oh, ow))]


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
@settings(FIXTURE_OK, max_examples=40)
@given(case=winograd_cases(symmetric=True), seed=st.integers(0, 2**16))
def test_conv2d_winograd_agrees_with_im2col(device, dtype, tol, case, seed):
    """The whole op (forward, input, weight and bias gradients) under either algorithm."""
    x, k, b, g = _draw_arrays(case, dtype, seed)
    padding = (case[5][0], case[5][2])
    wino = _conv_with("winograd", x, k, b, padding, device, g)
    ref = _conv_with("im2col", x, k, b, padding, device, g)
    for what, got, expected in zip(("output", "input grad", "weight grad", "bias grad"), wino, ref):
        assert got.dtype == dtype, what
        assert got.shape == expected.shape, what
        assert _rel_err(got, expected) <= tol, f"{what}: relative error {_rel_err(got, expected):.2e} > {tol}"


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
@settings(FIXTURE_OK, max_examples=40)
@given(case=winograd_cases(), seed=st.integers(0, 2**16))
def test_winograd_kernels_with_uneven_padding(dtype, tol, case, seed):
    """The kernels with (top, bottom, left, right) padding against im2col on an explicitly padded input."""
    x, k, _, g = _draw_arrays(case, dtype, seed)
    pads = case[5]
    padded = mr.tensor(np.pad(x, ((0, 0), (0, 0), pads[:2], pads[2:])), requires_grad=True)
    kt = mr.tensor(k, requires_grad=True)
    with backends.use_conv_algorithm("im2col"):
        y = conv2d(padded, kt)
        y.backward(mr.tensor(g))
    h, w = x.shape[2:]
    ref_dx = padded.grad.numpy()[:, :, pads[0] : pads[0] + h, pads[2] : pads[2] + w]
    got = [winograd.conv3x3(x, winograd.weight_transform(k), pads), winograd.conv3x3_input_grad(g, k, pads)]
    got.append(winograd.conv3x3_weight_grad(x, g, pads))
    for what, a, expected in zip(("output", "input grad", "weight grad"), got, (y.numpy(), ref_dx, kt.grad.numpy())):
        assert a.dtype == dtype and a.shape == expected.shape, what
        assert _rel_err(a, expected) <= tol, f"{what}: relative error {_rel_err(a, expected):.2e} > {tol}"


@settings(FIXTURE_OK, max_examples=15)
@given(case=winograd_cases(max_size=5, max_channels=3, symmetric=True), seed=st.integers(0, 2**16))
def test_winograd_gradcheck(device, case, seed):
    x, k, b, _ = _draw_arrays(case, np.float64, seed)
    inputs = [mr.tensor(a, device=device, requires_grad=True) for a in (x, k, b)]
    padding = (case[5][0], case[5][2])
    with backends.use_conv_algorithm("winograd"):
        assert mr.gradcheck(lambda a, kk, bb: conv2d(a, kk, bb, padding=padding), inputs)


@settings(FIXTURE_OK, max_examples=8)
@given(case=winograd_cases(max_size=5, max_channels=2, symmetric=True), seed=st.integers(0, 2**16))
def test_winograd_gradgradcheck(case, seed):
    """Second derivatives through the Winograd path (it keeps x, not columns) against finite differences."""
    x, k, b, _ = _draw_arrays(case, np.float64, seed)
    inputs = [mr.tensor(a, requires_grad=True) for a in (x, k, b)]
    padding = (case[5][0], case[5][2])
    with backends.use_conv_algorithm("winograd"):
        assert mr.gradgradcheck(lambda a, kk, bb: conv2d(a, kk, bb, padding=padding), inputs)


@settings(max_examples=20, deadline=None)
@given(c=st.integers(1, 4), o=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_weight_transform_adjoint_is_its_transpose(c, o, seed):
    """<U(g), dU> == <g, U^T(dU)>: the weight gradient passes through the exact adjoint of G g G^T."""
    rng = np.random.default_rng(seed)
    g, du = rng.standard_normal((o, c, 3, 3)), rng.standard_normal((16, c, o))
    lhs = np.vdot(winograd.weight_transform(g), du)
    rhs = np.vdot(g, winograd.weight_transform_adjoint(du))
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_weight_transform_matches_the_matrices():
    """U = G g G^T with Lavin & Gray's G, written out as a matrix product."""
    G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    g = np.random.default_rng(0).standard_normal((2, 3, 3, 3))
    expected = np.einsum("ai,ocij,bj->abco", G, g, G).reshape(16, 3, 2)
    np.testing.assert_allclose(winograd.weight_transform(g), expected, rtol=1e-14, atol=1e-14)


def test_auto_rule_picks_winograd_only_where_it_applies():
    choose = backends.choose_conv_algorithm
    f32 = np.dtype(np.float32)
    s1 = ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    big = (16, (32, 32))  # 16 input channels, 32x32 outputs: a CIFAR ResNet's first stage
    assert choose(np, f32, *s1, *big) == "winograd"
    assert choose(np, np.dtype(np.float64), *s1, *big) == "winograd"
    assert choose(np, np.dtype(np.float16), *s1, *big) == "im2col"
    assert choose(np, f32, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, *big) == "im2col"  # stride 2
    assert choose(np, f32, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, *big) == "im2col"  # 1x1
    assert choose(np, f32, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1, *big) == "im2col"  # dilated
    assert choose(np, f32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2, *big) == "im2col"  # grouped
    assert choose(np, f32, (3, 3), (1, 1), (3, 3, 3, 3), (1, 1), 1, *big) == "im2col"  # padding 3
    assert choose(object(), f32, *s1, *big) == "im2col"  # not numpy (cupy): its kernels stay


@pytest.mark.parametrize(
    "channels, size, expected",
    [
        (3, 32, "im2col"),  # an RGB stem: K = 3 GEMMs
        (7, 32, "im2col"),  # just under WINOGRAD_MIN_CHANNELS
        (8, 32, "winograd"),
        (16, 32, "winograd"),  # ResNet-20's first stage
        (32, 16, "winograd"),
        (64, 8, "winograd"),  # ResNet-20's last stage
        (16, 8, "im2col"),  # 8 * 8 * 16 = 1024 < WINOGRAD_MIN_WORK: the digits net's first stage
        (32, 8, "winograd"),  # 8 * 8 * 32 = 2048, just at the threshold
        (512, 4, "im2col"),  # ResNet-18's last stage: 4x4 maps
        (64, 2, "im2col"),
    ],
)
def test_auto_rule_by_layer_size(channels, size, expected):
    s1 = ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    assert backends.choose_conv_algorithm(np, np.dtype(np.float32), *s1, channels, (size, size)) == expected
    with backends.use_conv_algorithm("winograd"):  # forcing ignores the size rule
        assert backends.choose_conv_algorithm(np, np.dtype(np.float32), *s1, channels, (size, size)) == "winograd"


def test_auto_runs_the_chosen_algorithm(monkeypatch):
    """conv2d asks the rule with the layer's real channels and output size, and runs what it answers."""
    calls = []
    real = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda *a: calls.append(a[0].shape) or real(*a))
    conv2d(mr.randn(2, 16, 8, 8), mr.randn(16, 16, 3, 3), padding=1)  # 8*8*16 < 2048: im2col
    assert calls == []
    conv2d(mr.randn(2, 32, 8, 8), mr.randn(4, 32, 3, 3), padding=1)
    assert calls == [(2, 32, 8, 8)]
    conv2d(mr.randn(2, 32, 9, 9), mr.randn(4, 32, 3, 3), padding=0)  # 7x7 outputs: im2col
    assert calls == [(2, 32, 8, 8)]


def test_forcing_either_algorithm(monkeypatch):
    calls = []
    real = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda *a: calls.append(1) or real(*a))
    x, w = mr.randn(2, 3, 6, 6), mr.randn(4, 3, 3, 3)
    with backends.use_conv_algorithm("im2col"):
        reference = conv2d(x, w, padding=1).numpy()
    assert calls == []
    with backends.use_conv_algorithm("winograd"):
        np.testing.assert_allclose(conv2d(x, w, padding=1).numpy(), reference, rtol=1e-4, atol=1e-5)
        assert calls == [1]
        conv2d(x, w, stride=2, padding=1)  # a shape Winograd cannot do: im2col, no error
        assert calls == [1]
    assert backends.conv_algorithm == "auto"  # restored


def test_bad_algorithm_name_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="conv_algorithm.*auto, im2col, winograd.*'fast'"):
        with backends.use_conv_algorithm("fast"):
            pass
    monkeypatch.setattr(backends, "conv_algorithm", "fast")
    with pytest.raises(ValueError, match="'fast'"):
        conv2d(mr.randn(1, 1, 4, 4), mr.randn(1, 1, 3, 3))


def test_environment_variable_sets_the_default():
    env = dict(os.environ, MINIRES_CONV_ALGO="im2col")
    code = "import minires; print(minires.backends.conv_algorithm); print(minires.backends.describe_conv_algorithm())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "im2col"
    assert "MINIRES_CONV_ALGO" in out[1]


def test_thread_count_setting(monkeypatch):
    from minires.ops import _parallel

    monkeypatch.setenv("MINIRES_NUM_THREADS", "3")
    assert _parallel.threads() == 3
    monkeypatch.setenv("MINIRES_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="MINIRES_NUM_THREADS must be a positive integer, got 'two'"):
        _parallel.threads()


def test_chunked_kernels_match_one_chunk(monkeypatch):
    """Splitting the batch over the pool (and summing the chunks' weight gradients) changes nothing."""
    from minires.ops import _parallel

    rng = np.random.default_rng(0)
    x, k, g = rng.standard_normal((7, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal((7, 4, 6, 6))
    monkeypatch.setattr(winograd, "_CHUNK_BYTES", 1)  # one sample per chunk
    monkeypatch.setattr(_parallel, "MIN_PARALLEL_BYTES", 0)  # on the pool, however small
    monkeypatch.setattr(_parallel, "threads", lambda: 2)
    chunked = [winograd.conv3x3(x, winograd.weight_transform(k), (1, 1, 1, 1)), winograd.conv3x3_weight_grad(x, g, (1, 1, 1, 1))]
    monkeypatch.setattr(_parallel, "threads", lambda: 1)
    whole = [winograd.conv3x3(x, winograd.weight_transform(k), (1, 1, 1, 1)), winograd.conv3x3_weight_grad(x, g, (1, 1, 1, 1))]
    for a, b in zip(chunked, whole):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_nested_over_batch_runs_in_the_calling_worker(monkeypatch):
    """A chunk that itself calls over_batch runs the inner chunks in its own thread instead of waiting
    on the busy pool (which could deadlock), and every result comes back in order."""
    from minires.ops import _parallel

    monkeypatch.setenv("MINIRES_NUM_THREADS", "2")
    monkeypatch.setattr(_parallel, "MIN_PARALLEL_BYTES", 0)

    def outer(a: int, b: int) -> list[tuple[int, int]]:
        return _parallel.over_batch(np, 6, 1, lambda c, d: (a + c, a + d), 1)

    results: list = []
    runner = threading.Thread(target=lambda: results.append(_parallel.over_batch(np, 8, 1, outer, 1)), daemon=True)
    runner.start()
    runner.join(timeout=20)
    assert not runner.is_alive(), "nested over_batch did not finish: the pool waited on itself"
    assert results == [[[(a + c, a + c + 1) for c in range(6)] for a in range(8)]]


def test_small_work_stays_in_the_calling_thread(monkeypatch):
    """Under MIN_PARALLEL_BYTES of work the chunks run in the caller's thread (no pool hand-off);
    above it they run on the pool's threads."""
    from minires.ops import _parallel

    monkeypatch.setenv("MINIRES_NUM_THREADS", "2")
    where = lambda a, b: threading.current_thread().name  # noqa: E731
    small = _parallel.over_batch(np, 4, 1, where, 1)
    assert small == [threading.current_thread().name] * 4
    big = _parallel.over_batch(np, 4, _parallel.MIN_PARALLEL_BYTES, where, 1)
    assert len(big) == 4 and all(name.startswith("minires") for name in big)


@settings(max_examples=20, deadline=None)
@given(c=st.integers(1, 6), o=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_the_flipped_kernels_transform_is_a_permutation_of_the_kernels(c: int, o: int, seed: int) -> None:
    """U of w[:, :, ::-1, ::-1] with channels swapped equals U of w with its 4x4 positions permuted (0 <-> 3 on
    both axes; to rounding: k0 + k1 + k2 is summed in the other order); the input gradient from the forward's
    U equals the one from a fresh transform."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((o, c, 3, 3))
    direct = winograd.weight_transform(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    np.testing.assert_allclose(winograd.flipped_transform(winograd.weight_transform(w)), direct, rtol=1e-14, atol=1e-15)
    g = rng.standard_normal((2, o, 5, 4))
    np.testing.assert_allclose(
        winograd.conv3x3_input_grad(g, w, (1, 1, 1, 1), winograd.weight_transform(w)),
        winograd.conv3x3_input_grad(g, w, (1, 1, 1, 1)),
        rtol=1e-13, atol=1e-13,
    )
