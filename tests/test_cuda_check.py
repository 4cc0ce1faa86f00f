"""``python -m minires.cuda.check`` on a machine without a GPU: its messages, arguments, steps and report.

The GPU itself is faked: the kernel rows come from the real self-checks run on the foreign test device with
host-built kernels, the test and benchmark steps run real subprocesses on small stand-in checkouts, and
the training step runs on the CPU.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cuda_host import HostLauncher, host_kernels
from kernel_toolchains import require_host_compiler

import minires as mr
from minires.cuda import check
from minires.ops.cuda import sources

FAKE_GPU = {"name": "Fake GPU", "compute_capability": "9.0", "memory_gib": 1.0, "devices": 1, "cuda_runtime": 12090,
            "cuda_driver": 12090, "cupy": "0"}


def test_without_a_gpu_it_says_so_writes_the_report_and_exits_nonzero(tmp_path: Path) -> None:
    if mr.cuda.is_available():
        pytest.skip("this machine has a GPU")
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "minires.cuda.check", "--report", str(report)], capture_output=True, text=True)
    assert done.returncode == check.NO_GPU_EXIT
    assert "no usable CUDA GPU here, so nothing was checked" in done.stderr
    written = json.loads(report.read_text())
    assert written["verdict"] == "no gpu" and written["gpu"] is None and written["rows"] == []
    assert written["reason"] and written["environment"]["numpy"]


@pytest.mark.parametrize("argv, message", [(["--train-steps", "0"], "expected a positive integer"), (["--bogus"], "unrecognized")])
def test_bad_arguments_are_refused(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        check.parse_args(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def _fake_steps(monkeypatch, tests_row, train_row, bench_rows) -> None:
    monkeypatch.setattr(check, "gpu_info", lambda: (dict(FAKE_GPU), ""))
    real_check_kernels = check.check_kernels
    monkeypatch.setattr(check, "check_kernels", lambda: real_check_kernels("foreign"))  # host-built kernels
    monkeypatch.setattr(check, "run_gpu_tests", lambda: tests_row)
    monkeypatch.setattr(check, "train_resnet20", lambda steps: train_row)
    monkeypatch.setattr(check, "run_benchmark", lambda: bench_rows)


def test_report_with_a_fake_gpu(tmp_path: Path, monkeypatch, capsys) -> None:
    require_host_compiler()
    report = tmp_path / "out" / "report.json"
    bench = [check._row("benchmark resnet20 b128 float32", "measured", "minires 1 img/s", minires_img_s=1.0)]
    good = check._row("gpu tests", "pass", "ok", passed=3)
    trained = check._row("training resnet20", "pass", "loss 2.3 -> 0.1")
    with host_kernels():
        _fake_steps(monkeypatch, good, trained, bench)
        code = check.main(["--report", str(report)])
    out = capsys.readouterr().out
    written = json.loads(report.read_text())
    assert code == 0 and written["verdict"] == "pass"
    names = [r["check"] for r in written["rows"]]
    assert names[:9] == [f"kernel {f} {d}" for f in ("im2col", "col2im", "batch_norm") for d, *_ in sources.DTYPES]
    assert names[9:] == ["gpu tests", "training resnet20", "benchmark resnet20 b128 float32"]
    assert written["gpu"]["name"] == "Fake GPU"
    assert re.search(r"kernel batch_norm float16 +pass", out) and "verdict: PASS" in out and str(report) in out


def test_a_failed_check_fails_the_verdict(tmp_path: Path, monkeypatch, capsys) -> None:
    require_host_compiler()
    report = tmp_path / "report.json"
    # off by one: the gather skips the last kernel column
    skipped = sources.COL2IM.replace("for (long long kj = 0; kj < g.kW; ++kj)", "for (long long kj = 0; kj + 1 < g.kW; ++kj)")
    assert skipped != sources.COL2IM
    broken = HostLauncher(sources={"col2im": skipped})
    with host_kernels(broken):
        _fake_steps(monkeypatch, check._row("gpu tests", "fail", "1 failed"), check._row("training resnet20", "pass", ""), [])
        code = check.main(["--report", str(report)])
    out = capsys.readouterr().out
    written = json.loads(report.read_text())
    assert code == check.FAILED_EXIT and written["verdict"] == "fail"
    verdicts = {r["check"]: r["verdict"] for r in written["rows"]}
    assert verdicts["kernel col2im float32"] == "fail" and verdicts["kernel im2col float32"] == "pass"
    assert verdicts["gpu tests"] == "fail"
    assert "verdict: FAIL (kernel col2im float16, kernel col2im float32, kernel col2im float64, gpu tests)" in out


def test_a_crashing_step_is_reported_and_the_others_still_run(tmp_path: Path, monkeypatch) -> None:
    def crash(steps):
        raise MemoryError("out of GPU memory (fake)")

    monkeypatch.setattr(check, "gpu_info", lambda: (dict(FAKE_GPU), ""))
    monkeypatch.setattr(check, "check_kernels", lambda: [])
    monkeypatch.setattr(check, "train_resnet20", crash)
    monkeypatch.setattr(check, "run_benchmark", lambda: [check._row("benchmark", "not run", "no torch")])
    code = check.main(["--report", str(tmp_path / "r.json"), "--skip-tests"])
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert code == check.FAILED_EXIT
    assert rows == [
        check._row("training", "fail", "MemoryError: out of GPU memory (fake)"),
        check._row("benchmark", "not run", "no torch"),
    ]


def test_gpu_test_step_runs_pytest_on_the_device_subset(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "conftest.py").write_text(textwrap.dedent("""
        import os, pytest
        def pytest_configure(config):
            config.addinivalue_line("markers", "device: the device subset")
        @pytest.fixture
        def device():
            return os.environ["MINIRES_TEST_DEVICE"]
        def pytest_collection_modifyitems(items):
            for item in items:
                if "device" in item.fixturenames:
                    item.add_marker(pytest.mark.device)
    """))
    (tmp_path / "tests" / "test_a.py").write_text(textwrap.dedent("""
        def test_on_device(device):
            assert device == "cuda"
        def test_also_on_device(device):
            assert device == "cuda"
        def test_not_in_the_subset():
            raise AssertionError("the device subset must not run this")
        def test_fails_on_device(device):
            assert device == "cpu"
    """))
    row = check.run_gpu_tests(tmp_path)
    assert row["verdict"] == "fail", row
    assert (row["figures"]["passed"], row["figures"]["failed"], row["figures"]["deselected"]) == (2, 1, 1)
    assert "test_fails_on_device" in row["figures"]["output_tail"]


def test_steps_needing_a_checkout_say_so_without_one(tmp_path: Path) -> None:
    assert check.run_gpu_tests(tmp_path)["verdict"] == "not run"
    (row,) = check.run_benchmark(tmp_path)
    assert row["verdict"] == "not run" and "source checkout" in row["detail"]


def test_benchmark_step_reads_the_scripts_json(tmp_path: Path) -> None:
    (tmp_path / "benchmarks").mkdir()
    rows = [{"model": "resnet20", "batch": 128, "precision": "float32", "minires_img_s": 900.0, "minires_peak_mib": 1.0,
             "torch_img_s": 3000.0, "torch_peak_mib": 1.0, "ratio": 0.3}]
    (tmp_path / "benchmarks" / "gpu_resnet.py").write_text(
        "import json, sys\nargs = sys.argv\n"
        "assert args[args.index('--models') + 1:args.index('--models') + 3] == ['resnet20', 'resnet18']\n"
        f"json.dump({rows!r}, open(args[args.index('--json') + 1], 'w'))\n"
    )
    (row,) = check.run_benchmark(tmp_path)
    assert row["verdict"] == "measured" and row["check"] == "benchmark resnet20 b128 float32"
    assert row["detail"] == "minires 900 img/s, torch 3000 img/s, ratio 0.30"


def test_training_step_loss_falls_on_the_cpu() -> None:
    row = check.train_resnet20(device="cpu", steps=8, batch=4, images=8, image_size=8)  # small images: a fast test
    assert row["verdict"] == "pass", row["detail"]
    assert row["figures"]["last_loss"] < 0.7 * row["figures"]["first_loss"]
    with pytest.raises(ValueError, match="multiple of batch"):
        check.train_resnet20(device="cpu", steps=1, batch=3, images=8)
