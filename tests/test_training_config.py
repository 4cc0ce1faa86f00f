"""The training command's settings: which a resumed run must keep (one list), flags, and accuracy counting."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import minires as mr
from minires.training.config import RESUME_FIXED, RUN_LOCAL, TrainConfig, check_resume, flag_name
from minires.training.evaluate import count_correct


def test_flag_names() -> None:
    assert flag_name("batch_size") == "--batch-size"
    assert flag_name("augment") == "--no-augment"
    assert flag_name("progress") == "--no-progress"
    assert flag_name("sync_bn") == "--no-sync-bn"


def test_resume_refuses_each_fixed_setting_and_lists_them_all() -> None:
    config = TrainConfig(dataset="digits", model="resnet20", batch_size=32, lr=0.1, optimizer="sgd", schedule="cosine",
                         warmup_epochs=1.0, weight_decay=5e-4)
    saved = dataclasses.asdict(config)
    check_resume(saved, config, "ckpt.npz")  # the same settings: fine
    for name in RESUME_FIXED:
        value = getattr(config, name)
        other = (not value) if isinstance(value, bool) else ("x" if isinstance(value, str) else (value or 0) + 1)
        with pytest.raises(ValueError, match=rf"--resume: {flag_name(name)} conflicts with the checkpoint 'ckpt.npz'") as info:
            check_resume({**saved, name: other}, config, "ckpt.npz")
        assert all(flag_name(n) in str(info.value) for n in RESUME_FIXED)


def test_resume_allows_every_other_setting_to_change() -> None:
    config = TrainConfig(epochs=3)
    saved = dataclasses.asdict(config)
    free = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in RESUME_FIXED]
    assert {"epochs", "device", "label_smoothing", "clip_grad_norm", "data_dir"} <= set(free)
    assert set(RUN_LOCAL) <= set(free)
    changed = {name: "changed" for name in free}
    check_resume({**saved, **changed}, config, "ckpt.npz")  # no error


def test_count_correct_matches_a_direct_count() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((50, 7))
    labels = rng.integers(0, 7, size=50)
    expected = sum(int(np.argmax(row) == label) for row, label in zip(logits, labels))
    assert count_correct(mr.tensor(logits, requires_grad=True), mr.tensor(labels)) == expected
