"""Every example runs with --quick (in a subprocess, as a user would run it), prints numbers and saves figures."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def run_example(name: str, out: Path, *extra: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", "--out", str(out), *extra],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=180,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    assert (out / "results.json").exists()
    return done.stdout


def number_after(label: str, text: str) -> float:
    match = re.search(re.escape(label) + r"\s*(" + FLOAT + ")", text)
    assert match, f"no number after {label!r} in:\n{text}"
    return float(match.group(1))


def test_autograd_from_scratch(tmp_path: Path) -> None:
    out = run_example("autograd_from_scratch", tmp_path)
    assert number_after("max grad difference:", out) < 1e-5
    assert "gradcheck (fast mode, random directions, float64): True" in out
    losses = re.search(r"SGD: loss (" + FLOAT + r") -> (" + FLOAT + ")", out)
    assert losses and float(losses.group(2)) < float(losses.group(1))
    assert (tmp_path / "graph.dot").read_text().startswith("digraph")
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_skip_connection_gradients(tmp_path: Path) -> None:
    out = run_example("skip_connection_gradients", tmp_path)
    assert out.count("identity term == dL/dy exactly: True") == 2
    errors = [float(x) for x in re.findall(r"max error identity term (" + FLOAT + r"), branch term (" + FLOAT + ")", out)[0]]
    assert max(errors) < 1e-6
    assert number_after("max |identity + branch - dL/dx|:", out) < 1e-12
    rows = json.loads((tmp_path / "results.json").read_text())["network"]
    assert [r["block"] for r in rows] == ["layer1.0", "layer2.0", "layer3.0"]
    assert re.search(r"layer1\.0\s+identity\s+" + FLOAT, out)
    assert (tmp_path / "skip_probe.png").stat().st_size > 0


def test_depth_sweep(tmp_path: Path) -> None:
    out = run_example("depth_sweep", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    for name in ("plain", "residual", "plain, no BN", "residual, no BN"):
        for depth in (8, 20):
            row = re.search(rf"^{re.escape(name)}\s+{depth}" + rf"\s+({FLOAT})" * 6, out, re.M)
            assert row, f"no row for {name} depth {depth}"
            loss, first, last, ratio, rms_first, rms_last = map(float, row.groups())
            r = results[name][str(depth)]
            # the table shows the saved measurements, and its ratio column is their ratio
            assert loss == pytest.approx(r["loss"], rel=1e-3) and first == pytest.approx(r["first_grad"], rel=1e-3)
            assert ratio == pytest.approx(r["first_grad"] / r["last_grad"], rel=1e-3)
            assert len(r["block_rms"]) == (depth - 2) // 2  # one value per two-conv block
            if name == "plain":  # each block ends in relu(BN(.)) with unit scale: RMS of relu(N(0, 1)) = sqrt(1/2)
                assert 0.6 < rms_first < 0.8 and 0.6 < rms_last < 0.8
            if name.startswith("residual"):  # x + F(x) adds variance block after block
                assert rms_last > rms_first
    assert (tmp_path / "depth_sweep.png").stat().st_size > 0


def test_degradation(tmp_path: Path) -> None:
    out = run_example("degradation", tmp_path)
    curves = json.loads((tmp_path / "results.json").read_text())["curves"]
    assert set(curves) == {"plain-20", "resnet-20"} and len(curves["plain-20"]) == 1
    for name in ("plain-20", "resnet-20"):
        row = re.search(rf"^{name}\s+({FLOAT})\s+({FLOAT})%\s+({FLOAT})%", out, re.M)
        assert row, f"no row for {name}"
        last = curves[name][-1]
        # the table is the last epoch's record; accuracies are counts over the 256 training / 360 test digits
        assert float(row.group(1)) == pytest.approx(last["train_loss"], abs=1e-4)
        assert float(row.group(2)) == pytest.approx(100 * (1 - last["train_acc"]), abs=0.01)
        assert float(row.group(3)) == pytest.approx(100 * (1 - last["test_acc"]), abs=0.01)
        assert last["train_acc"] * 256 == pytest.approx(round(last["train_acc"] * 256))
        assert last["test_acc"] * 360 == pytest.approx(round(last["test_acc"] * 360))
    assert (tmp_path / "degradation.png").stat().st_size > 0


def test_custom_op_gradcheck(tmp_path: Path) -> None:
    out = run_example("custom_op_gradcheck", tmp_path)
    assert "gradcheck Swish on a random (3, 4) float64 array: True" in out
    assert re.search(r"'Swish passes gradcheck': passed on \d+ examples", out)
    assert "BuggySwish raised GradcheckError" in out
    assert "'BuggySwish passes gradcheck': failed" in out
    assert number_after("max |backward - finite differences| on the plot's grid:", out) < 1e-6
    assert (tmp_path / "swish.png").stat().st_size > 0


def test_train_cifar(tmp_path: Path) -> None:
    out = run_example("train_cifar", tmp_path)
    assert "NOT CIFAR-10" in out  # says that the quick run trains on digits
    assert re.search(r"resnet18\s+11,173,962 parameters", out)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # the printed accuracy is the run's last test accuracy, a count over the 360 test digits
    assert number_after("test accuracy", out) == pytest.approx(100 * records[-1]["test_acc"], abs=0.01)
    assert records[-1]["test_acc"] * 360 == pytest.approx(round(records[-1]["test_acc"] * 360))
    assert (tmp_path / "checkpoint.npz").exists()


def test_train_cifar_without_data_dir_refuses_a_full_run(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / "train_cifar.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2 and "--data-dir" in done.stderr


@pytest.mark.parametrize("name", ["autograd_from_scratch", "skip_connection_gradients", "depth_sweep", "degradation",
                                  "custom_op_gradcheck", "train_cifar"])
def test_example_has_main_and_quick_flag(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each example is importable and offers main(argv) with --quick and --out (as its --help shows)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))  # as when run as a script: examples import their shared helpers
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the examples run nothing on import (main is behind __name__ == "__main__")
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown), pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "--quick" in shown.getvalue() and "--out" in shown.getvalue()


def test_weights_flag_with_a_minires_file(tmp_path: Path) -> None:
    """--weights FILE probes the net in FILE (here an mr.save-d ResNet-8 for digits) beside an initialised twin."""
    import numpy as np

    import minires as mr
    from minires.data import load_digits
    from minires.models import CifarResNet
    from minires.viz import SkipProbe

    mr.manual_seed(7)
    model = CifarResNet(8, in_channels=1)
    for name, p in model.named_parameters():  # weights no initialiser would give
        p.data[...] = np.random.default_rng(len(name)).normal(scale=0.3, size=p.shape)
    mr.save(model.state_dict(), tmp_path / "r8.npz")

    out = run_example("skip_connection_gradients", tmp_path / "probe", "--weights", str(tmp_path / "r8.npz"))
    assert "trained ResNet-8" in out and "ResNet-8 at initialisation" in out
    results = json.loads((tmp_path / "probe" / "results.json").read_text())
    data = load_digits(train=True)
    images, labels = data.get_batch(np.arange(16))
    with SkipProbe(model) as probe:
        mr.nn.functional.cross_entropy(model(mr.tensor(((images - data.mean[0]) / data.std[0]).astype(np.float32))),
                                       mr.tensor(labels)).backward()
    expected = [row["branch_norm"] for row in probe.table()]
    assert np.allclose([row["branch_norm"] for row in results["trained"]["network"]], expected, rtol=1e-5)
    assert not np.allclose([row["branch_norm"] for row in results["network"]], expected, rtol=1e-2)
    assert (tmp_path / "probe" / "skip_probe_trained.png").stat().st_size > 0

    out = run_example("depth_sweep", tmp_path / "flow", "--weights", str(tmp_path / "r8.npz"))
    assert re.search(r"ResNet-8 trained\s+loss\s+" + FLOAT, out) and re.search(r"ResNet-8 initialised\s+loss", out)
    flows = json.loads((tmp_path / "flow" / "results.json").read_text())["weights"]["layers"]
    assert len(flows["trained"]) == len(flows["initialised"]) == 8  # 7 convolutions and the classifier
    assert (tmp_path / "flow" / "gradient_flow_weights.png").stat().st_size > 0


def test_weights_flag_with_a_pytorch_checkpoint(tmp_path: Path) -> None:
    """A PyTorch CIFAR-ResNet .th file (akamaster layout) and a CIFAR folder: the probe runs on the trained net."""
    pytest.importorskip("torch")
    from test_cifar import make_cifar10
    from test_cifar_checkpoint import random_net, save_like_akamaster

    folder, _ = make_cifar10(tmp_path / "data")
    path = save_like_akamaster(random_net(20), tmp_path / "resnet20.th")
    out = run_example("skip_connection_gradients", tmp_path / "probe", "--weights", str(path), "--data-dir", str(folder))
    assert "trained ResNet-20" in out
    rows = json.loads((tmp_path / "probe" / "results.json").read_text())["trained"]["network"]
    assert [r["block"] for r in rows][:2] == ["layer1.0", "layer1.1"] and len(rows) == 9
    missing = subprocess.run([sys.executable, str(EXAMPLES / "depth_sweep.py"), "--quick", "--out", str(tmp_path / "x"),
                              "--weights", str(path)], capture_output=True, text=True, cwd=ROOT, timeout=180,
                             env=dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg"))
    assert missing.returncode != 0 and "--data-dir" in missing.stderr
