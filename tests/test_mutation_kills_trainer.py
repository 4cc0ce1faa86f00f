"""Trainer behaviour a mutation run (docs/mutation_testing.md) found unguarded: the epoch record of a run
resumed mid-epoch (not only its weights) equals the uninterrupted run's, and the progress bar appears, with
its loss / accuracy / speed read-out, exactly when ``progress`` is on; the run's header and each epoch's record
are printed, and a Ctrl-C's message goes to stderr.

Small runs: ResNet-20 on 128 (or 64) digits, batches of 32, one or two epochs.
"""

from __future__ import annotations

import os
import signal

import pytest
from test_training import _config  # the small digits run of the training tests

from minires.training import Trainer, load_checkpoint


def test_a_run_resumed_mid_epoch_reports_the_same_epoch_as_one_that_never_stopped(tmp_path, monkeypatch, capsys) -> None:
    """Ctrl-C after the 2nd of epoch 2's 4 batches, then --resume: the epoch's training loss and accuracy sum
    the batches from before and after the interruption, so they equal the straight run's (bit for bit, as the
    weights do); its time includes the part before the interruption."""
    straight = Trainer(_config(str(tmp_path / "a"))).fit()

    interrupted = Trainer(_config(str(tmp_path / "b")))
    original_step, calls = interrupted.optimizer.step, {"n": 0}

    def step_then_ctrl_c() -> None:
        original_step()
        calls["n"] += 1
        if calls["n"] == 6:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(interrupted.optimizer, "step", step_then_ctrl_c)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    out, err = capsys.readouterr()
    assert "interrupted: saved" in err and "continue with --resume" in err and "interrupted" not in out
    partial = load_checkpoint(tmp_path / "b" / "checkpoint.npz")["partial"]
    assert partial["batches"] == 2 and partial["seen"] == 64 and partial["seconds"] > 0

    resumed = Trainer(_config(str(tmp_path / "b"))).fit(resume=str(tmp_path / "b" / "checkpoint.npz"))
    assert [r["epoch"] for r in resumed] == [1, 2]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert resumed[1][key] == straight[1][key], key
    assert resumed[1]["seconds"] > partial["seconds"]


@pytest.mark.parametrize("progress,plain", [(True, False), (False, True)])
def test_the_progress_bar_shows_exactly_when_asked_and_each_epoch_prints_its_record(tmp_path, capsys, progress, plain) -> None:
    (r,) = Trainer(_config(str(tmp_path / "run"), epochs=1, train_subset=64, progress=progress, plain=plain)).fit()
    out, err = capsys.readouterr()
    assert f"minires-train: resnet20{' (plain)' if plain else ''} on digits (64 train" in out
    assert (f"epoch   1/1  lr {r['lr']:.4f}  train loss {r['train_loss']:.4f} acc {100 * r['train_acc']:.2f}%  "
            f"test loss {r['test_loss']:.4f} acc {100 * r['test_acc']:.2f}%") in out
    assert f"curves: {tmp_path / 'run' / 'curves.png'}" in out
    if progress:
        assert "epoch 1/1" in err and "batch/s" in err and "loss=" in err and "acc=" in err and "img_s=" in err
    else:
        assert "epoch 1/1" not in err and "loss=" not in err


@pytest.mark.parametrize("preact,plain", [(True, False), (False, True), (False, False)])
def test_the_model_flags_reach_the_model(tmp_path, preact: bool, plain: bool) -> None:
    """--preact builds pre-activation blocks (with the final BN + ReLU), --plain blocks without the skip: a
    learning run alone cannot tell, since every variant learns the digits."""
    from minires.models.blocks import PreActBasicBlock

    model = Trainer(_config(str(tmp_path / "run"), preact=preact, plain=plain)).model
    blocks = [m for m in model.modules() if hasattr(m, "plain") and hasattr(m, "branch")]
    assert len(blocks) == 9  # ResNet-20: three stages of three blocks
    assert all(isinstance(b, PreActBasicBlock) == preact for b in blocks)
    assert all((b.add is None) == plain for b in blocks)
    assert any(key.startswith("final_bn.") for key in model.state_dict()) == preact


def test_a_non_finite_test_loss_stops_the_run_before_saving_that_epoch(tmp_path, monkeypatch) -> None:
    """A NaN in evaluation (the training loss was fine) stops with a message naming the epoch, and that epoch
    is neither checkpointed nor written to the metrics."""
    import dataclasses

    import minires.training.trainer as trainer_module
    from minires.training.trainer import NonFiniteLossError

    original = trainer_module.evaluate
    monkeypatch.setattr(trainer_module, "evaluate", lambda *a, **k: dataclasses.replace(original(*a, **k), loss=float("nan")))
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="the test loss became nan after epoch 1; stopped without saving that epoch"):
        Trainer(_config(str(out), epochs=1, train_subset=64)).fit()
    assert not (out / "checkpoint.npz").exists()
    assert not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text().strip()


def test_ctrl_c_during_evaluation_says_so_on_stderr(tmp_path, monkeypatch, capsys) -> None:
    import minires.training.trainer as trainer_module

    original = trainer_module.evaluate

    def evaluate_with_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate", evaluate_with_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(str(tmp_path / "run"), epochs=1, train_subset=64)).fit()
    out, err = capsys.readouterr()
    assert "interrupted: saved" in err and "(after epoch 1)" in err and "interrupted" not in out
