"""minires.ops._procs: the worker processes over shared memory give the values one process gives, and a
failing worker costs a warning, not a wrong result."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import warnings
from typing import Any, Iterator

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minires as mr
import minires.nn.functional as F
from minires import backends
from minires.models import resnet20
from minires.ops import _procs, batch_norm_cpu, winograd

pytestmark = pytest.mark.skipif(not _procs.supported(), reason="worker processes need Linux (memfd, /proc)")


@pytest.fixture(scope="module")
def workers(three_processes: None) -> None:
    """Two worker processes and this one (conftest's ``three_processes``)."""


@contextlib.contextmanager
def split(on: bool) -> Iterator[list[int]]:
    """Every call split over the three processes (``on``), or every call here; yields the parts of each run."""
    parts: list[int] = []
    run = _procs.Plan.run
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_procs, "MIN_SPLIT_BYTES", 0 if on else 1 << 60)
        mp.setattr(batch_norm_cpu, "SPLIT_BYTES", 0 if on else 1 << 60)
        mp.setattr(_procs.Plan, "run", lambda self, *a, **k: (parts.append(self.parts), run(self, *a, **k))[1])
        yield parts


def both_ways(fn: Any) -> tuple[Any, Any, list[int]]:
    """fn() computed with every call here, then with every call split; and the parts of the split runs."""
    with split(False):
        here = fn()
    with split(True) as parts:
        there = fn()
    return here, there, parts


def assert_close_all(a: Any, b: Any, rtol: float = 1e-12) -> None:
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol)


# ---------------------------------------------------------------------------------------------------------
# shared memory


def test_size_classes_cover_the_request_and_waste_little() -> None:
    for n in [1, 4095, 4096, 4097, 65536, 100_000, 3 << 20, (1 << 30) + 1]:
        c = _procs.size_class(n)
        assert c >= n and c % 4096 == 0
        assert c <= max(4096, n * 1.125 + 4096)


def test_shared_arrays_are_independent_and_reused_after_they_die(workers: None) -> None:
    a, b = _procs.empty((100, 7), np.float64), _procs.empty((100, 7), np.float64)
    arena = _procs._the_arena()
    assert arena is not None and arena.locate(a) is not None and arena.locate(b) is not None
    a[...] = 1
    b[...] = 2
    assert a.sum() == 700 and b.sum() == 1400
    address = b.__array_interface__["data"][0]
    view = b[3:, ::2]  # a view keeps the block alive
    del b
    c = _procs.empty((100, 7), np.float64)
    assert c.__array_interface__["data"][0] != address
    assert (view == 2).all()
    del view
    d = _procs.empty((99, 7), np.float64)  # the same size class: the freed block comes back
    assert d.__array_interface__["data"][0] == address


def test_shared_copies_private_arrays_in_their_layout_and_passes_shared_ones(workers: None) -> None:
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 4, 5, 3).transpose(0, 3, 1, 2)  # channels-last
    s = _procs.shared(x)
    assert s is not x and np.array_equal(s, x)
    assert np.argsort(s.strides).tolist() == np.argsort(x.strides).tolist()
    assert _procs.shared(s) is s
    with pytest.raises(ValueError, match="not in shared memory"):
        _procs.encode(x, _procs._the_arena())


def test_gradient_sums_land_in_shared_memory_in_the_layout_of_the_first(workers: None) -> None:
    a = np.random.default_rng(0).standard_normal((4, 6, 5, 3)).transpose(0, 3, 1, 2)  # channels-last
    b = np.ascontiguousarray(a) * 3
    with split(True):
        s = _procs.add(a, b)
    np.testing.assert_array_equal(s, a + b)
    assert _procs._the_arena().locate(s) is not None
    assert np.argsort(s.strides).tolist() == np.argsort(a.strides).tolist()
    with split(False):  # small work: a plain private sum
        assert _procs._the_arena().locate(_procs.add(a, b)) is None
    sa, sb = _procs.shared(a), _procs.shared(b)  # both shared: each process adds its rows
    with split(True) as parts:
        s2 = _procs.add(sa, sb)
    assert parts == [3]
    np.testing.assert_array_equal(s2, a + b)
    assert np.argsort(s2.strides).tolist() == np.argsort(a.strides).tolist()


def test_a_forked_child_gets_its_own_arena(workers: None, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = _procs._the_arena()
    pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: pid + 1)
    assert _procs._the_arena() is not parent  # never the parent's blocks
    assert _procs._the_arena().locate(_procs.empty((10,), np.float64)) is None  # no workers here: private memory
    monkeypatch.undo()
    _procs._arena = parent


# ---------------------------------------------------------------------------------------------------------
# every slice computed, by the right process


def test_each_process_computes_its_slice(workers: None) -> None:
    x = _procs.shared(np.arange(12.0))
    out = _procs.empty((12,), np.float64)
    with split(True) as parts:
        _procs.plan(12, 0, x).run(_procs._check_rows, x, out=(out,))
    assert parts == [3]
    np.testing.assert_array_equal(out, 2 * np.arange(12.0) + np.repeat([0, 1, 2], 4))  # + the part that wrote it


def test_small_batches_and_private_outputs_stay_here(workers: None) -> None:
    with split(True):
        assert _procs.plan(1, 0).parts == 1
        assert _procs.plan(2, 0).parts == 2  # at least one sample a process
        assert _procs.plan(3, 0).parts == 3
    x = np.arange(8.0)
    out = np.empty(8)  # not shared: the workers could not write it
    with split(True):
        _procs.plan(8, 0, x).run(_procs._check_rows, x, out=(out,))
    np.testing.assert_array_equal(out, 2 * x)


# ---------------------------------------------------------------------------------------------------------
# the kernels: split equals one process


conv_cases = st.fixed_dictionaries(
    {
        "n": st.integers(3, 7),
        "c": st.integers(1, 5),
        "o": st.integers(1, 5),
        "h": st.integers(1, 9),
        "w": st.integers(1, 9),
        "pads": st.tuples(*[st.integers(0, 2)] * 4),
        "seed": st.integers(0, 2**16),
    }
)


@settings(max_examples=25, deadline=None)
@given(case=conv_cases)
def test_winograd_split_equals_one_process(workers: None, case: dict[str, Any]) -> None:
    rng = np.random.default_rng(case["seed"])
    pads = case["pads"]
    h, w = max(case["h"], 3 - pads[0] - pads[1]), max(case["w"], 3 - pads[2] - pads[3])
    x = rng.standard_normal((case["n"], case["c"], h, w))
    k = rng.standard_normal((case["o"], case["c"], 3, 3))
    g = rng.standard_normal((case["n"], case["o"], h + pads[0] + pads[1] - 2, w + pads[2] + pads[3] - 2))

    def run() -> tuple[Any, ...]:
        return (
            winograd.conv3x3(x, winograd.weight_transform(k), pads),
            winograd.conv3x3_input_grad(g, k, pads),
            winograd.conv3x3_weight_grad(x, g, pads),
        )

    here, there, parts = both_ways(run)
    assert set(parts) == {3}
    assert_close_all(here, there)


im2col_cases = st.fixed_dictionaries(
    {
        "n": st.integers(3, 6),
        "c": st.sampled_from([1, 3, 5, 70]),  # 70: the wide input-gradient path (one GEMM)
        "o": st.integers(1, 4),
        "size": st.integers(3, 8),
        "kernel": st.integers(1, 3),
        "stride": st.integers(1, 2),
        "padding": st.integers(0, 1),
        "dilation": st.integers(1, 2),
        "bias": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


@settings(max_examples=25, deadline=None)
@given(case=im2col_cases)
def test_im2col_convolution_split_equals_one_process(workers: None, case: dict[str, Any]) -> None:
    rng = np.random.default_rng(case["seed"])
    k = case["kernel"]
    assume(case["size"] + 2 * case["padding"] >= case["dilation"] * (k - 1) + 1)
    x0 = rng.standard_normal((case["n"], case["c"], case["size"], case["size"]))
    w0 = rng.standard_normal((case["o"], case["c"], k, k))
    b0 = rng.standard_normal(case["o"]) if case["bias"] else None

    def run() -> tuple[Any, ...]:
        x, w = mr.tensor(x0, requires_grad=True), mr.tensor(w0, requires_grad=True)
        b = None if b0 is None else mr.tensor(b0, requires_grad=True)
        with backends.use_conv_algorithm("im2col"):
            y = F.conv2d(x, w, b, case["stride"], case["padding"], case["dilation"])
            (y * mr.tensor(np.cos(np.arange(y.numpy().size)).reshape(y.shape))).sum().backward()
        return y.numpy(), x.grad.numpy(), w.grad.numpy(), (0 if b is None else b.grad.numpy())

    here, there, parts = both_ways(run)
    assert set(parts) == {3}
    assert_close_all(here, there)


def test_a_resnet_training_step_split_equals_one_process(workers: None) -> None:
    """Float64 ResNet-20 forward and backward (Winograd, im2col, BatchNorm with add and ReLU): every
    parameter's gradient the same whichever processes computed it."""
    x0 = np.random.default_rng(0).standard_normal((6, 3, 16, 16))
    y0 = np.arange(6) % 10

    def run() -> list[Any]:
        mr.manual_seed(0)
        model = resnet20().to(mr.float64)
        loss = F.cross_entropy(model(mr.tensor(x0)), mr.tensor(y0))
        loss.backward()
        return [loss.numpy()] + [p.grad.numpy() for p in model.parameters()]

    here, there, parts = both_ways(run)
    assert 3 in parts
    assert_close_all(here, there, rtol=1e-10)


_SAME_RUN = """
import hashlib, numpy as np, minires as mr, minires.nn.functional as F
from minires.models import resnet20
from minires.ops import _procs, batch_norm_cpu
from minires.optim import SGD
_procs.MIN_SPLIT_BYTES = batch_norm_cpu.SPLIT_BYTES = 1 << 16  # small work split too
mr.manual_seed(0)
model = resnet20()
opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
rng = np.random.default_rng(0)
for step in range(3):
    x = mr.tensor(rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    y = mr.tensor(rng.integers(0, 10, 16))
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
digest = hashlib.sha256(b"".join(p.numpy().tobytes() for p in model.parameters())).hexdigest()
print(len(_procs._pool.workers) if _procs._pool else 0, digest)
"""


def test_the_same_program_gives_the_same_numbers_every_run() -> None:
    """float32 training steps with the work split from the first big call: two runs, bit-identical weights
    (the first big call waits for the workers, so no call's split depends on how fast they started)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "MINIRES_PROCESSES": "2", "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    runs = [subprocess.run([sys.executable, "-c", _SAME_RUN], env=env, capture_output=True, text=True, check=True).stdout.split()
            for _ in range(2)]
    assert runs[0][0] == "1"  # the work was split
    assert runs[0] == runs[1]


# ---------------------------------------------------------------------------------------------------------
# failures


def test_a_worker_runs_only_registered_kernels_of_minires(workers: None) -> None:
    worker = _procs._pool.workers[0]
    for name, why in (("os:system", "not minires' own"), ("minires.ops._procs:shutdown", "not a registered kernel")):
        _procs.send(worker.out, {"kernel": name, "rows": [0, 1, 0], "args": []})
        with pytest.raises(RuntimeError, match=why):
            worker.wait()


def test_a_dead_worker_costs_a_warning_not_a_wrong_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIRES_PROCESSES", "2")
    _procs.reset()
    try:
        assert _procs.start() == 1
        _procs._pool.workers[0].proc.kill()
        _procs._pool.workers[0].proc.wait()
        x = _procs.shared(np.arange(10.0))
        out = _procs.empty((10,), np.float64)
        with split(True), pytest.warns(RuntimeWarning, match="worker process failed"):
            _procs.plan(10, 0, x).run(_procs._check_rows, x, out=(out,))
        np.testing.assert_array_equal(out, 2 * np.arange(10.0) + np.repeat([0, 1], 5))  # the dead one's slice done here
        with split(True) as parts, warnings.catch_warnings():
            warnings.simplefilter("error")
            assert _procs.plan(10, 0, x).parts == 1  # not used again, and no second warning
        assert parts == []
    finally:
        _procs.reset()


def test_malloc_keeps_freed_memory_unless_told_not_to() -> None:
    code = "from minires.ops._malloc import keep_freed_memory; print(keep_freed_memory())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")

    def run(**extra: str) -> str:
        done = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    glibc = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
    assert run() == ("True" if glibc else "False")
    assert run(MINIRES_KEEP_MEMORY="0") == "False"
    assert run(MALLOC_MMAP_THRESHOLD_="65536") == "False"  # the user's own setting wins


def test_a_worker_that_sees_shared_memory_wrong_fails_its_self_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker first computes a known answer in shared memory; here its arrays are misplaced by one
    element (as if the mapping were wrong), and the workers are not used: one warning, nothing wrong."""
    monkeypatch.setenv("MINIRES_PROCESSES", "2")
    _procs.reset()
    encode = _procs.encode

    def shifted(value: Any, arena: Any) -> Any:
        out = encode(value, arena)
        if isinstance(value, np.ndarray):
            out["array"][1] += value.itemsize
        return out

    monkeypatch.setattr(_procs, "encode", shifted)
    try:
        with pytest.warns(RuntimeWarning, match="self-check"):
            assert _procs.start() == 0
        assert _procs.plan(100, 1 << 40).parts == 1
    finally:
        _procs.reset()


def test_an_interrupted_wait_stops_the_workers_before_anything_else_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while this process waits for a worker: the worker may still be writing into arrays this
    process is about to reuse, so it is killed; the next big call starts new workers and gets right values."""
    monkeypatch.setenv("MINIRES_PROCESSES", "2")
    _procs.reset()
    try:
        assert _procs.start() == 1
        old = _procs._pool.workers[0].proc
        x = _procs.shared(np.arange(10.0))
        out = _procs.empty((10,), np.float64)

        def interrupted(self: Any) -> None:
            raise KeyboardInterrupt

        with monkeypatch.context() as mp, split(True):
            mp.setattr(_procs._Worker, "wait", interrupted)
            with pytest.raises(KeyboardInterrupt):
                _procs.plan(10, 0, x).run(_procs._check_rows, x, out=(out,))
        assert old.poll() is not None and _procs._pool is None  # killed, forgotten
        assert _procs.start() == 1 and _procs._pool.workers[0].proc is not old
        with split(True) as parts:
            _procs.plan(10, 0, x).run(_procs._check_rows, x, out=(out,))
        assert parts == [2]
        np.testing.assert_array_equal(out, 2 * np.arange(10.0) + np.repeat([0, 1], 5))
    finally:
        _procs.reset()
