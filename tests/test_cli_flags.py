"""minires-train / minires-eval flag checking and exit paths: bad values are argparse errors naming the
flag, a NaN test loss stops with a non-zero exit, resuming past --epochs says nothing was trained,
Ctrl-C in minires-eval exits cleanly, and --help shows only meaningful defaults."""

from __future__ import annotations

import shutil

import pytest

from minires.training.cli import _parser, eval_main, main


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--epochs", "0"),
        ("--epochs", "-1"),
        ("--batch-size", "0"),
        ("--lr", "inf"),
        ("--lr", "nan"),
        ("--lr", "-0.1"),
        ("--clip-grad-norm", "-1"),
        ("--clip-grad-norm", "0"),
        ("--seed", "-1"),
        ("--weight-decay", "-0.0001"),
        ("--label-smoothing", "1.5"),
        ("--train-subset", "0"),
        ("--warmup-epochs", "nan"),
    ],
)
def test_bad_flag_values_are_argparse_errors_naming_the_flag(flag, value, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([flag, value, "--out", str(tmp_path / "run"), "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and repr(value) in err
    assert not (tmp_path / "run").exists()


def test_data_dir_with_digits_is_refused(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    assert "argument --data-dir:" in capsys.readouterr().err


def test_help_shows_no_meaningless_defaults():
    text = _parser().format_help()
    assert "(default: None)" not in text
    assert "(default: True)" not in text and "(default: False)" not in text
    assert "(default: 0.9)" in text  # a real default is still shown


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    args = ["--plain", "--model", "resnet20", "--train-subset", "64", "--batch-size", "32", "--epochs", "1",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    return out


def test_data_dir_when_resuming_a_digits_run_is_refused(one_epoch_run, tmp_path, capsys):
    run = shutil.copytree(one_epoch_run, tmp_path / "run")
    with pytest.raises(SystemExit) as exc:
        main(["--resume", str(run / "checkpoint.npz"), "--epochs", "2", "--data-dir", str(tmp_path), "--no-progress"])
    assert exc.value.code == 2
    assert "argument --data-dir:" in capsys.readouterr().err


def test_resume_past_epochs_says_nothing_was_trained(one_epoch_run, tmp_path, capsys):
    run = shutil.copytree(one_epoch_run, tmp_path / "run")
    capsys.readouterr()
    assert main(["--resume", str(run / "checkpoint.npz"), "--epochs", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "nothing to train" in out and "done" not in out


def test_nan_test_loss_stops_with_a_non_zero_exit(one_epoch_run, tmp_path, capsys, monkeypatch):
    import minires.training.trainer as trainer_module
    from minires.training.evaluate import EvalResult

    run = shutil.copytree(one_epoch_run, tmp_path / "run")
    real = trainer_module.evaluate

    def nan_loss(*args, **kwargs):
        result = real(*args, **kwargs)
        return EvalResult(float("nan"), result.accuracy, result.confusion)

    monkeypatch.setattr(trainer_module, "evaluate", nan_loss)
    capsys.readouterr()
    assert main(["--resume", str(run / "checkpoint.npz"), "--epochs", "2", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "test loss became nan" in captured.err and "done" not in captured.out


def test_ctrl_c_in_eval_exits_cleanly(one_epoch_run, capsys, monkeypatch):
    import minires.training.cli as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "evaluate", interrupted)
    assert eval_main(["--checkpoint", str(one_epoch_run / "checkpoint.npz")]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_eval_on_a_state_dict_file_says_what_the_file_is(tmp_path, capsys):
    import minires as mr
    import minires.nn as nn

    path = tmp_path / "weights.npz"
    mr.save(nn.Linear(2, 3).state_dict(), path)
    assert eval_main(["--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert "holds 2 plain arrays such as 'weight'" in err and "mr.load(path)" in err
