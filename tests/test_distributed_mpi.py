"""minires.distributed across 2 processes: each test launches ``mpiexec -n 2`` through subprocess, with a
timeout and one BLAS thread per rank, and checks what the ranks wrote against answers computed here.

Skipped when mpi4py (the "dist" extra) is missing — unless MINIRES_REQUIRE_MPI=1 (set by .ci/run), where
that is a failure: CI must run these.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minires as mr
import minires.nn.functional as F
from minires.training.cli import eval_main

ROOT = Path(__file__).resolve().parent.parent
WORKER = str(Path(__file__).resolve().parent / "distributed_worker.py")
REQUIRED = os.environ.get("MINIRES_REQUIRE_MPI") == "1"
TIMEOUT_S = 240  # generous: the machine may be shared; a hang is what this guards against


def _mpiexec() -> str | None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    return shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


MPIEXEC = _mpiexec()
pytestmark = pytest.mark.skipif(MPIEXEC is None and not REQUIRED, reason='needs mpi4py and mpiexec: pip install ".[dist]"')


THREAD_SETTINGS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MINIRES_NUM_THREADS")


def launch(
    args: list[str], ranks: int | None = 2, timeout: float = TIMEOUT_S, one_thread: bool = True
) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` as ``ranks`` MPI processes (None: one plain process); kill the whole group on timeout.

    ``one_thread``: one BLAS thread per rank (the default here); False leaves the thread settings unset."""
    if MPIEXEC is None:
        pytest.fail('MINIRES_REQUIRE_MPI=1 but mpi4py/mpiexec are missing: pip install ".[dist]"')
    env = {k: v for k, v in os.environ.items() if k not in THREAD_SETTINGS}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    if one_thread:
        env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    command = ([MPIEXEC, "-n", str(ranks)] if ranks else []) + [sys.executable, *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)  # fmt: skip
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # mpiexec and every rank it started
        process.communicate()
        pytest.fail(f"{' '.join(command)} did not finish within {timeout} s (a hang)")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def worker(scenario: str, out: Path, *extra: str, ranks: int | None = 2, one_thread: bool = True) -> list[dict[str, np.ndarray]]:
    out.mkdir(parents=True, exist_ok=True)
    result = launch([WORKER, scenario, str(out), *extra], ranks, one_thread=one_thread)
    assert result.returncode == 0, result.stderr[-3000:]
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(ranks or 1)]


def test_collectives_known_answers(tmp_path):
    ranks = worker("collectives", tmp_path)
    base = np.arange(6.0).reshape(2, 3)  # rank r contributes base * (r + 1)
    for r, got in enumerate(ranks):
        np.testing.assert_array_equal(got["sum"], base * 3)
        np.testing.assert_array_equal(got["mean"], base * 1.5)
        np.testing.assert_array_equal(got["max"], base * 2)
        np.testing.assert_array_equal(got["min"], base)
        np.testing.assert_array_equal(got["ints"], [3, 3, 3, 3])
        np.testing.assert_array_equal(got["tensor"], [3.0, 3.0, 3.0])
        assert got["same"]  # in place: all_reduce returns the tensor it was given
        np.testing.assert_array_equal(got["bcast"], np.ones(5))  # from rank 1 (src = size - 1)
        assert str(got["obj"]) == "from rank 0" and got["obj_n"].tolist() == [0, 2]
        assert got["metrics"].tolist() == [3.0, 20.0]
        assert int(got["size"]) == 2 and int(got["local_rank"]) == r and str(got["backend"]) == "mpi"


def test_device_arrays_travel_through_the_host(tmp_path):
    """On the foreign device (arrays that refuse implicit numpy conversion, as CuPy's): values and device kept."""
    ranks = worker("device_arrays", tmp_path)
    for got in ranks:
        np.testing.assert_array_equal(got["reduced"], np.arange(4.0) * 3)
        assert str(got["device"]) == "foreign" and str(got["grad_device"]) == "foreign"
    for key in ranks[0]:
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)  # averaged gradients agree


def test_nccl_backend_on_one_gpu(tmp_path):
    """NCCL refuses two ranks on one device, so on a one-GPU machine this is one process (MPI singleton)."""
    if not mr.cuda.is_available():
        pytest.skip("needs a CUDA GPU and CuPy (the NCCL backend has not been run without one)")
    (got,) = worker("nccl_smoke", tmp_path, ranks=None)
    assert str(got["backend"]) == "nccl" and float(got["seen"]) == 3.0
    np.testing.assert_array_equal(got["a"], np.arange(4.0))  # sum, mean and broadcast over one rank
    np.testing.assert_allclose(got["y"], got["y_ref"], rtol=1e-5, atol=1e-6)  # SyncBatchNorm = BatchNorm alone
    np.testing.assert_allclose(got["g"], got["g_ref"], rtol=1e-4, atol=1e-6)


def test_sync_batch_norm_on_two_ranks_equals_batch_norm_on_the_whole_batch(tmp_path):
    """Uneven shares (4 and 2 images), float64: SyncBatchNorm's pieces against F.batch_norm on all 6 images."""
    ranks = worker("syncbn_grad", tmp_path)
    rng = np.random.default_rng(5)  # the worker's data, rebuilt here
    x_all = rng.normal(2.0, 3.0, size=(6, 3, 2, 2))
    weights = rng.normal(size=(6, 3, 2, 2))
    x = mr.tensor(x_all, requires_grad=True)
    w = mr.tensor(np.array([1.5, -0.5, 2.0]), requires_grad=True)
    b = mr.tensor(np.array([0.1, 0.2, -0.3]), requires_grad=True)
    rm, rv = mr.zeros(3, dtype=mr.float64), mr.ones(3, dtype=mr.float64)
    y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.5)
    (y * mr.tensor(weights)).sum().backward()
    np.testing.assert_allclose(np.concatenate([r["y"] for r in ranks]), y.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([r["dx"] for r in ranks]), x.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sum(r["dw"] for r in ranks), w.grad.numpy(), rtol=1e-10)  # local parts sum up
    np.testing.assert_allclose(sum(r["db"] for r in ranks), b.grad.numpy(), rtol=1e-10)
    for r in ranks:
        np.testing.assert_allclose(r["running_mean"], rm.numpy(), rtol=1e-12)
        np.testing.assert_allclose(r["running_var"], rv.numpy(), rtol=1e-12)


@pytest.fixture(scope="module")
def training_runs(tmp_path_factory):
    """The same 8 SGD steps (global batch 16): one process with plain BatchNorm, and 2 ranks x 8 images
    with SyncBatchNorm and with plain BatchNorm."""
    base = tmp_path_factory.mktemp("training")
    single = worker("train", base / "single", "plain", ranks=None)[0]
    return single, worker("train", base / "sync", "sync"), worker("train", base / "plain", "plain")


def _max_relative_gap(a: dict, b: dict) -> float:
    keys = [k for k in a if k != "losses" and not k.endswith("num_batches_tracked")]
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-3)) for k in keys)


def test_all_ranks_hold_bit_identical_weights(training_runs):
    _, sync, plain = training_runs
    for ranks in (sync, plain):
        for key in ranks[0]:
            if key == "losses" or (ranks is plain and "running" in key):
                continue  # each rank's own loss; plain BN's running stats are per rank until the next forward
            np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)


def test_two_ranks_with_sync_batchnorm_train_like_one_process(training_runs):
    """2 ranks x 8 images with SyncBatchNorm = 1 process x 16 images, up to float32 rounding (summation
    order differs: 1e-7 relative per step, grown over 8 steps of momentum SGD)."""
    single, sync, _ = training_runs
    assert _max_relative_gap(single, sync[0]) < 2e-5


def test_two_ranks_with_plain_batchnorm_differ_from_one_process(training_runs):
    """The documented difference: plain BatchNorm normalises each rank's 8 images by their own statistics,
    which is a different function of the weights than the 16-image statistics (percent-level here)."""
    single, sync, plain = training_runs
    assert _max_relative_gap(single, plain[0]) > 100 * max(_max_relative_gap(single, sync[0]), 1e-6)


def test_a_failing_rank_ends_every_rank_with_its_error(tmp_path):
    result = launch([WORKER, "fail", str(tmp_path)], timeout=120)
    assert result.returncode != 0
    assert "planted failure on rank 1" in result.stderr and "[rank 1]" in result.stderr
    assert not (tmp_path / "rank0.npz").exists()  # rank 0 was ended inside its all-reduce


def test_a_forgotten_sync_gradients_is_an_error_not_a_divergence(tmp_path):
    result = launch([WORKER, "forgotten_sync", str(tmp_path)], timeout=120)
    assert result.returncode != 0 and "never averaged across the ranks" in result.stderr


def test_test_set_is_evaluated_exactly_once_over_the_ranks(tmp_path):
    from minires.data import get_dataset
    from minires.models import resnet20
    from minires.training.config import TrainConfig
    from minires.training.evaluate import evaluate
    from minires.training.loaders import make_test_loader

    ranks = worker("evaluate_sharded", tmp_path)
    test_set = get_dataset("digits", None, train=False)
    mr.manual_seed(0)  # the worker's model, rebuilt here and evaluated by one process
    reference = evaluate(resnet20(in_channels=1), make_test_loader(TrainConfig(prefetch=0), test_set), test_set.num_classes)
    assert [int(r["shard"]) for r in ranks] == [180, 180]
    for r in ranks:
        assert int(r["confusion"].sum()) == len(test_set) == 360
        np.testing.assert_array_equal(r["confusion"], reference.confusion)
        np.testing.assert_allclose(float(r["loss"]), reference.loss, rtol=1e-5)


def _train(args: list[str], ranks: int | None = 2) -> subprocess.CompletedProcess:
    # a constant rate, so a run resumed with more --epochs follows the same schedule as one planned that long
    fixed = [] if "--resume" in args else ["--train-subset", "64", "--batch-size", "16", "--schedule", "constant",
                                           "--warmup-epochs", "0"]  # fmt: skip
    result = launch(["-m", "minires.train", "--no-progress", *fixed, *args], ranks)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_minires_train_under_mpiexec_end_to_end(tmp_path, capsys):
    """Rank 0 alone prints and writes; resume continues exactly; the test accuracy is over the whole test set."""
    first = _train(["--epochs", "2", "--out", str(tmp_path / "run")])
    assert first.stdout.count("global batch 32") == 1 and first.stdout.count("epoch   1/2") == 1
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert len(metrics.read_text().splitlines()) == 2
    _train(["--resume", str(tmp_path / "run" / "checkpoint.npz"), "--epochs", "3"])
    straight = _train(["--epochs", "3", "--out", str(tmp_path / "straight")])
    assert "resumed" not in straight.stdout
    resumed = np.load(tmp_path / "run" / "checkpoint.npz")
    uninterrupted = np.load(tmp_path / "straight" / "checkpoint.npz")
    model_keys = [k for k in resumed.files if k.startswith("model.")]
    assert model_keys and all(np.array_equal(resumed[k], uninterrupted[k]) for k in model_keys)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    # the same weights evaluated by one process over the whole test set give the recorded accuracy
    capsys.readouterr()
    assert eval_main(["--checkpoint", str(tmp_path / "run" / "checkpoint.npz")]) == 0
    hits, total = map(int, re.search(r"\((\d+)/(\d+)\)", capsys.readouterr().out).groups())
    assert total == 360 and hits / total == records[-1]["test_acc"]


def test_no_sync_bn_and_resume_with_another_number_of_processes_is_refused(tmp_path):
    first = _train(["--epochs", "1", "--no-sync-bn", "--out", str(tmp_path / "run")])
    assert "BatchNorm statistics per process" in first.stdout
    result = launch(["-m", "minires.train", "--resume", str(tmp_path / "run" / "checkpoint.npz")], ranks=None)
    assert result.returncode == 2 and "was trained by 2 process(es)" in result.stderr


def test_ranks_on_one_machine_share_its_cores(tmp_path):
    """Without thread settings, init() gives each of the 2 local ranks half the cores (at least one) for
    both the chunk pool and BLAS, instead of every rank starting a thread per core."""
    ranks = worker("threads", tmp_path / "shared", one_thread=False)
    for r in ranks:
        assert int(r["local_size"]) == 2
        share = max(1, int(r["cores"]) // 2)
        assert int(r["pool"]) == share
        assert [int(b) for b in r["blas"]] == [share] * len(r["blas"]) and len(r["blas"]) >= 1


def test_thread_settings_of_the_user_are_kept(tmp_path):
    ranks = worker("threads", tmp_path / "user")  # OMP/OPENBLAS_NUM_THREADS=1 given: BLAS stays at 1
    for r in ranks:
        assert int(r["pool"]) == max(1, int(r["cores"]) // 2)  # the pool still gets its share
        assert [int(b) for b in r["blas"]] == [1] * len(r["blas"])
