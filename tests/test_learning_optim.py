"""Learning tests: every optimizer under every schedule actually lowers the loss of a tiny fixed problem.

The update-rule tests in test_optim.py compare single steps with formulas; these check the whole loop a user
writes (forward, cross entropy, zero_grad, backward, optional clipping, step, schedule step) *learns*. The
problem: 96 points in 6 dimensions labelled by a fixed random linear teacher into 3 classes, and a 6-16-3
MLP, trained full-batch for 60 steps. Every combination must cut the training loss to at most half of its
starting value (about ln 3 = 1.10; the floor with label smoothing 0.1 is about 0.29) and classify at least
90% of the points correctly. A loop whose update is broken (no step, gradients zeroed before the step,
a step of the wrong sign, a schedule that drives the rate to zero at once) fails this.
"""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
import minires.nn as nn
import minires.nn.functional as F
from minires import optim
from minires.backend import to_numpy
from minires.nn.utils import clip_grad_norm_

STEPS = 60
MARGIN = 0.5  # the final loss must be at most MARGIN times the first


def _problem() -> tuple[mr.Tensor, mr.Tensor]:
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((96, 6)).astype(np.float32)
    teacher = rng.standard_normal((6, 3))
    y = (x @ teacher).argmax(axis=1)
    return mr.tensor(x), mr.tensor(y)


OPTIMIZERS = {
    "sgd": lambda p: optim.SGD(p, lr=0.5),
    "momentum": lambda p: optim.SGD(p, lr=0.2, momentum=0.9),
    "nesterov": lambda p: optim.SGD(p, lr=0.2, momentum=0.9, nesterov=True),
    "adam": lambda p: optim.Adam(p, lr=0.03),
    "adamw": lambda p: optim.AdamW(p, lr=0.03, weight_decay=0.01),
}

SCHED = optim.lr_scheduler
SCHEDULES = {
    "constant": lambda o: None,
    "step": lambda o: SCHED.StepLR(o, step_size=20, gamma=0.5),
    "multistep": lambda o: SCHED.MultiStepLR(o, milestones=[30, 45], gamma=0.3),
    "cosine": lambda o: SCHED.CosineAnnealingLR(o, T_max=STEPS),
    "onecycle": lambda o: SCHED.OneCycleLR(o, max_lr=[g["lr"] for g in o.param_groups], total_steps=STEPS),
    "warmup+cosine": lambda o: SCHED.SequentialLR(
        o, [SCHED.LinearLR(o, start_factor=0.1, total_iters=10), SCHED.CosineAnnealingLR(o, T_max=STEPS - 10)], milestones=[10]
    ),
}

# (clip_grad_norm max_norm, label smoothing): plain, each alone, both
EXTRAS = {"plain": (None, 0.0), "clip": (0.2, 0.0), "smooth": (None, 0.1), "clip+smooth": (0.2, 0.1)}


def train(make_optimizer, make_schedule, clip: float | None, smoothing: float) -> tuple[list[float], float]:
    """The user's loop; returns the loss of every step and the final training accuracy."""
    mr.manual_seed(0)
    x, y = _problem()
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = make_optimizer(model.parameters())
    sched = make_schedule(opt)
    losses = []
    for _ in range(STEPS):
        loss = F.cross_entropy(model(x), y, label_smoothing=smoothing)
        opt.zero_grad()
        loss.backward()
        if clip is not None:
            clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.item()))
    with mr.no_grad():
        accuracy = float((to_numpy(model(x).data).argmax(axis=1) == to_numpy(y.data)).mean())
    return losses, accuracy


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_and_schedule_learns(optimizer: str, schedule: str) -> None:
    losses, accuracy = train(OPTIMIZERS[optimizer], SCHEDULES[schedule], None, 0.0)
    assert losses[-1] <= MARGIN * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert accuracy >= 0.9


@pytest.mark.parametrize("extra", [e for e in EXTRAS if e != "plain"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_learns_with_clipping_and_label_smoothing(optimizer: str, extra: str) -> None:
    clip, smoothing = EXTRAS[extra]
    losses, accuracy = train(OPTIMIZERS[optimizer], SCHEDULES["warmup+cosine"], clip, smoothing)
    assert losses[-1] <= MARGIN * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert accuracy >= 0.9


def test_clipping_bounds_every_update() -> None:
    """With plain SGD at lr 1 and clip 0.05, no step moves the parameters by more than 0.05 in norm,
    while the unclipped first step moves them by more (so the bound is not met by accident)."""
    x, y = _problem()
    mr.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = optim.SGD(model.parameters(), lr=1.0)

    def flat() -> np.ndarray:
        return np.concatenate([to_numpy(p.data).ravel() for p in model.parameters()])

    for step in range(5):
        before = flat()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        raw = float(np.sqrt(sum(float((to_numpy(p.grad.data) ** 2).sum()) for p in model.parameters())))
        clip_grad_norm_(model.parameters(), 0.05)
        opt.step()
        moved = float(np.linalg.norm(flat() - before))
        assert moved == pytest.approx(min(raw, 0.05), rel=1e-4)
        if step == 0:
            assert raw > 0.05
