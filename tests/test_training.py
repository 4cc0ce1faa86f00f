"""The training command: metrics, checkpoints, exact resume, interruption, non-finite loss, evaluation."""

from __future__ import annotations

import json
import os
import sys
import threading

import numpy as np
import pytest

from minires.serialization import load
from minires.training import TrainConfig, Trainer, load_checkpoint, save_checkpoint
from minires.training.cli import eval_main, main
from minires.training.metrics import METRIC_KEYS
from minires.training.trainer import NonFiniteLossError, final_weights


def _config(out: str, **overrides: object) -> TrainConfig:
    base = dict(
        dataset="digits", model="resnet20", epochs=2, batch_size=32, train_subset=128, lr=0.05,
        warmup_epochs=0.5, out=out, progress=False, prefetch=1, seed=3,
    )
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_metrics_checkpoint_and_curves(tmp_path):
    out = str(tmp_path / "run")
    records = Trainer(_config(out)).fit()
    assert [r["epoch"] for r in records] == [1, 2]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        record = json.loads(line)
        assert set(record) == set(METRIC_KEYS)
        assert 0.0 <= record["train_acc"] <= 1.0 and 0.0 <= record["test_acc"] <= 1.0
        assert record["images_per_s"] > 0 and record["seconds"] > 0
    ckpt = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    assert ckpt["epoch"] == 2
    assert "conv1.weight" in ckpt["model"] and "layer1.0.bn1.num_batches_tracked" in ckpt["model"]
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000


def test_resume_is_bit_exact(tmp_path, monkeypatch):
    straight = Trainer(_config(str(tmp_path / "a"), epochs=3))
    straight.fit()
    first = Trainer(_config(str(tmp_path / "b"), epochs=3))
    save = first.save

    def save_then_die(partial=None):  # the process is killed right after epoch 1's checkpoint
        save(partial)
        raise KeyboardInterrupt

    monkeypatch.setattr(first, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    resumed = Trainer(_config(str(tmp_path / "b"), epochs=3))
    resumed.fit(resume=str(tmp_path / "b" / "checkpoint.npz"))
    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    # the metrics of the resumed run continue the first run's file
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_interrupt_mid_epoch_saves_and_resumes_exactly(tmp_path, monkeypatch):
    straight = Trainer(_config(str(tmp_path / "a"), epochs=2))
    straight.fit()

    interrupted = Trainer(_config(str(tmp_path / "b"), epochs=2))
    calls = {"n": 0}
    original_step = interrupted.optimizer.step

    def step_then_ctrl_c() -> None:
        original_step()
        calls["n"] += 1
        if calls["n"] == 6:  # the second batch of epoch 2 (4 batches of 32 per epoch)
            import signal

            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(interrupted.optimizer, "step", step_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    ckpt = load_checkpoint(tmp_path / "b" / "checkpoint.npz")
    assert ckpt["epoch"] == 1 and ckpt["partial"]["batches"] == 2

    resumed = Trainer(_config(str(tmp_path / "b"), epochs=2))
    resumed.fit(resume=str(tmp_path / "b" / "checkpoint.npz"))
    a, b = final_weights(straight), final_weights(resumed)
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_resume_with_more_epochs_replans_the_schedule(tmp_path):
    out = str(tmp_path / "run")
    Trainer(_config(out, epochs=1, schedule="cosine", warmup_epochs=0)).fit()
    longer = Trainer(_config(out, epochs=3, schedule="cosine", warmup_epochs=0))
    records = longer.fit(resume=os.path.join(out, "checkpoint.npz"))
    # cosine over 3 epochs of 4 steps: epoch 2 starts at step 4 of 12
    base = 0.05
    assert records[1]["lr"] == pytest.approx(base * (1 + np.cos(np.pi * 7 / 12)) / 2)
    assert [r["epoch"] for r in records] == [1, 2, 3]


def test_crash_while_writing_checkpoint_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, {"w": np.ones(3)}, epoch=1)

    def broken_savez(file, **arrays):
        file.write(b"PK\x03\x04 partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"w": np.zeros(3)}, epoch=2)
    monkeypatch.undo()
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 1 and np.array_equal(ckpt["model"]["w"], np.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]  # no temp file left behind


def test_checkpoint_roundtrips_nested_state(tmp_path):
    state = {"state": {0: {"step": 3, "buf": np.arange(4.0)}}, "groups": [{"lr": 0.1, "betas": (0.9, 0.999), "p": [0, 1]}]}
    rng = np.random.default_rng(5).bit_generator.state  # holds 128-bit integers
    save_checkpoint(tmp_path / "c.npz", {"a": np.eye(2)}, optimizer=state, rng=rng, note="x", nothing=None)
    back = load_checkpoint(tmp_path / "c.npz")
    assert back["optimizer"]["state"][0]["step"] == 3
    assert np.array_equal(back["optimizer"]["state"][0]["buf"], np.arange(4.0))
    assert back["optimizer"]["groups"][0]["betas"] == (0.9, 0.999)
    assert back["rng"] == rng and back["note"] == "x" and back["nothing"] is None
    # a plain numpy reader sees only arrays (no pickle needed)
    assert "model.a" in load(tmp_path / "c.npz")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    Trainer(_config(out, epochs=1)).fit()
    before = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    second = Trainer(_config(out, epochs=2))
    forward = second.model.forward
    monkeypatch.setattr(second.model, "forward", lambda x: forward(x) * float("nan"))
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        second.fit(resume=os.path.join(out, "checkpoint.npz"))
    # the epoch's prefetch thread was stopped, although the exception (and its frames) is still alive
    assert not [t for t in threading.enumerate() if t.name == "minires-DataLoader-prefetch" and t.is_alive()]
    after = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    assert after["epoch"] == 1
    for key in before["model"]:
        assert np.array_equal(before["model"][key], after["model"][key])


def test_eval_command_prints_confusion_matrix(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--epochs", "1", "--train-subset", "64", "--batch-size", "32", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert eval_main(["--checkpoint", str(out / "checkpoint.npz")]) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "per-class accuracy" in text and "confusion matrix" in text
    matrix_rows = text.split("confusion matrix")[1].strip().splitlines()[2:]
    counts = np.array([[int(v) for v in row.split()[1:]] for row in matrix_rows])
    assert counts.shape == (10, 10) and counts.sum() == 360  # every test image counted once


def test_clear_errors(tmp_path, capsys):
    assert main(["--resume", str(tmp_path / "missing.npz"), "--no-progress", "--out", str(tmp_path)]) == 2
    assert "missing.npz" in capsys.readouterr().err
    assert main(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--no-progress", "--out", str(tmp_path)]) == 2
    assert "cifar" in capsys.readouterr().err.lower()
    assert eval_main(["--checkpoint", str(tmp_path / "nope.npz")]) == 2


def test_trains_and_evaluates_on_a_cifar_archive(tmp_path, capsys):
    from test_cifar import make_cifar10, make_tar  # tiny official-layout CIFAR-10, made by the tests

    folder, _ = make_cifar10(tmp_path / "src")
    archive = make_tar(folder, tmp_path / "cifar-10-python.tar.gz")
    out = tmp_path / "run"
    args = ["--dataset", "cifar10", "--data-dir", str(archive), "--epochs", "1", "--batch-size", "25", "--out", str(out)]
    assert main(args + ["--no-progress"]) == 0
    record = json.loads((out / "metrics.jsonl").read_text())
    assert record["epoch"] == 1 and record["images_per_s"] > 0
    capsys.readouterr()
    assert main(["--eval-only", "--resume", str(out / "checkpoint.npz")]) == 0
    text = capsys.readouterr().out
    assert "airplane" in text and "truck" in text  # class names come from batches.meta


def test_batch_larger_than_training_set_is_a_clear_error(tmp_path, capsys):
    assert main(["--train-subset", "20", "--batch-size", "64", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "--batch-size 64" in capsys.readouterr().err


def test_cuda_without_cupy_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from minires import backend

    monkeypatch.setitem(sys.modules, "cupy", None)  # as if CuPy were not installed (CI installs it for NVRTC)
    monkeypatch.setattr(backend._BACKENDS["cuda"], "_xp", None)
    assert main(["--device", "cuda", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and "pip install" in err


# ----- resuming from the command line, --out folders, Ctrl-C during evaluation ------------------------------
@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One epoch of a plain ResNet-20 on 64 digits in batches of 32, trained through the command line."""
    out = tmp_path_factory.mktemp("small") / "run"
    args = ["--plain", "--train-subset", "64", "--batch-size", "32", "--epochs", "1", "--lr", "0.05", "--seed", "4",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    return out


def _copy_run(run, dest):
    import shutil

    shutil.copytree(run, dest)
    return dest / "checkpoint.npz"


def test_cli_resume_keeps_the_checkpoint_settings(small_run, tmp_path):
    ckpt = _copy_run(small_run, tmp_path / "run")
    # README's form: only --resume and --epochs. The run continues as it was configured, not with the defaults.
    assert main(["--resume", str(ckpt), "--epochs", "2", "--no-progress"]) == 0
    config = load_checkpoint(ckpt)["config"]
    assert (config["plain"], config["train_subset"], config["batch_size"], config["lr"], config["seed"]) == (True, 64, 32, 0.05, 4)
    assert load_checkpoint(ckpt)["epoch"] == 2
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_resume_with_a_conflicting_setting_is_a_clear_error(small_run, tmp_path, capsys):
    ckpt = _copy_run(small_run, tmp_path / "run")
    assert main(["--resume", str(ckpt), "--epochs", "2", "--batch-size", "16", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size" in err and "batch_size=32" in err and "batch_size=16" in err and str(ckpt) in err
    # the same check guards Trainer.fit(resume=...) (here: a residual net from a plain run's weights)
    trainer = Trainer(_config(str(tmp_path / "run"), train_subset=64, batch_size=32, lr=0.05, seed=4, warmup_epochs=None))
    with pytest.raises(ValueError, match="--plain"):
        trainer.fit(resume=str(ckpt))
    assert load_checkpoint(ckpt)["epoch"] == 1  # nothing was trained or written


def test_resume_into_another_out_carries_the_metrics_over(small_run, tmp_path):
    ckpt = _copy_run(small_run, tmp_path / "first")
    other = tmp_path / "second"
    assert main(["--resume", str(ckpt), "--epochs", "2", "--out", str(other), "--no-progress"]) == 0
    epochs = [json.loads(line)["epoch"] for line in (other / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert load_checkpoint(other / "checkpoint.npz")["epoch"] == 2
    assert load_checkpoint(ckpt)["epoch"] == 1  # the first folder is left as it was


def test_new_run_refuses_an_out_folder_holding_a_run(small_run, tmp_path, capsys):
    ckpt = _copy_run(small_run, tmp_path / "run")
    before = ckpt.read_bytes()
    assert main(["--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--resume" in err
    assert ckpt.read_bytes() == before


def test_default_out_folders_never_collide(tmp_path, monkeypatch):
    import time

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt: "20250101-000000")
    (tmp_path / "runs" / "20250101-000000").mkdir(parents=True)
    (tmp_path / "runs" / "20250101-000000-2").mkdir()
    assert TrainConfig().resolved().out == os.path.join("runs", "20250101-000000-3")


def test_ctrl_c_during_evaluation_saves_the_finished_epoch(tmp_path, monkeypatch):
    import signal

    import minires.training.trainer as trainer_module

    original = trainer_module.evaluate

    def evaluate_with_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate", evaluate_with_ctrl_c)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(str(out), train_subset=64)).fit()
    ckpt = load_checkpoint(out / "checkpoint.npz")
    assert ckpt["epoch"] == 1 and not ckpt["partial"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_eval_does_not_load_the_training_split(small_run, monkeypatch, capsys):
    import minires.training.trainer as trainer_module

    loaded = []
    original = trainer_module.get_dataset

    def recording_get_dataset(name, data_dir=None, train=True):
        loaded.append(train)
        return original(name, data_dir, train)

    monkeypatch.setattr(trainer_module, "get_dataset", recording_get_dataset)
    assert eval_main(["--checkpoint", str(small_run / "checkpoint.npz")]) == 0
    assert loaded == [False]
    assert "after epoch 1" in capsys.readouterr().out
