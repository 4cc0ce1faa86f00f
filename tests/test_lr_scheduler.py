"""Learning-rate schedules: every step against the closed forms, PyTorch's last_epoch and chaining
semantics, SequentialLR switching, state_dict resume and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import minires as mr
from minires import optim
from minires.optim import lr_scheduler as sched

BASES = [0.1, 0.03]


def make_optimizer(kind: str = "sgd", bases: list[float] = BASES) -> optim.Optimizer:
    groups = [{"params": [mr.tensor(np.ones(3), requires_grad=True)], "lr": lr} for lr in bases]
    if kind == "adam":
        return optim.Adam(groups)
    return optim.SGD(groups, momentum=0.9)


def trace(scheduler: sched.LRScheduler, steps: int) -> list[list[float]]:
    """The rates at t = 0 (after construction), 1, ..., steps; checks get_last_lr against the groups."""
    out = []
    for t in range(steps + 1):
        if t > 0:
            scheduler.optimizer.step()
            scheduler.step()
        lrs = [g["lr"] for g in scheduler.optimizer.param_groups]
        assert scheduler.get_last_lr() == lrs
        assert scheduler.last_epoch == t
        out.append(lrs)
    return out


def assert_trace(got: list[list[float]], closed_form, rel: float = 1e-12) -> None:
    for t, lrs in enumerate(got):
        for base, lr in zip(BASES, lrs):
            assert lr == pytest.approx(closed_form(base, t), rel=rel, abs=1e-15), f"t={t}"


def test_construction_takes_the_initial_step_and_records_initial_lr() -> None:
    opt = make_optimizer()
    s = sched.StepLR(opt, step_size=3)
    assert s.last_epoch == 0 and s.base_lrs == BASES
    assert [g["initial_lr"] for g in opt.param_groups] == BASES
    assert s.get_last_lr() == BASES


def test_step_lr() -> None:
    s = sched.StepLR(make_optimizer(), step_size=3, gamma=0.5)
    assert_trace(trace(s, 12), lambda b, t: b * 0.5 ** (t // 3))


def test_multistep_lr_including_a_repeated_milestone() -> None:
    milestones = [2, 5, 5, 9]
    s = sched.MultiStepLR(make_optimizer(), milestones=milestones, gamma=0.1)
    assert_trace(trace(s, 12), lambda b, t: b * 0.1 ** sum(m <= t for m in milestones))


def test_linear_lr_warmup() -> None:
    s = sched.LinearLR(make_optimizer(), start_factor=0.1, end_factor=1.0, total_iters=4)
    assert_trace(trace(s, 8), lambda b, t: b * (0.1 + 0.9 * min(t, 4) / 4))


def test_linear_lr_decay() -> None:
    s = sched.LinearLR(make_optimizer(), start_factor=1.0, end_factor=0.25, total_iters=6)
    assert_trace(trace(s, 9), lambda b, t: b * (1.0 - 0.75 * min(t, 6) / 6))


@pytest.mark.parametrize("eta_min", [0.0, 1e-3])
def test_cosine_annealing_closed_form_including_past_t_max(eta_min: float) -> None:
    T = 7
    s = sched.CosineAnnealingLR(make_optimizer(), T_max=T, eta_min=eta_min)
    assert_trace(trace(s, 2 * T + 3), lambda b, t: eta_min + (b - eta_min) * (1 + math.cos(math.pi * t / T)) / 2)
    assert s.get_last_lr()[0] != pytest.approx(eta_min)


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * pct)) / 2


def _lin(start: float, end: float, pct: float) -> float:
    return start + (end - start) * pct


def one_cycle_reference(total: int, max_lr: float, pct: float, div: float, final_div: float, anneal, three: bool):
    """The 1cycle rate at each t in 0..total-1, phase by phase."""
    lo, hi = max_lr / div, max_lr
    floor = lo / final_div
    up_end = pct * total - 1
    out = []
    for t in range(total):
        if t <= up_end:
            out.append(anneal(lo, hi, t / up_end))
        elif three and t <= 2 * pct * total - 2:
            down_end = 2 * pct * total - 2
            out.append(anneal(hi, lo, (t - up_end) / (down_end - up_end)))
        elif three:
            down_end = 2 * pct * total - 2
            out.append(anneal(lo, floor, (t - down_end) / (total - 1 - down_end)))
        else:
            out.append(anneal(hi, floor, (t - up_end) / (total - 1 - up_end)))
    return out


@pytest.mark.parametrize("strategy", ["cos", "linear"])
@pytest.mark.parametrize("three_phase", [False, True])
def test_one_cycle_phases(strategy: str, three_phase: bool) -> None:
    total, max_lr = 20, 0.4
    opt = make_optimizer(bases=[0.1])
    s = sched.OneCycleLR(opt, max_lr=max_lr, total_steps=total, pct_start=0.25, anneal_strategy=strategy,
                         div_factor=10.0, final_div_factor=100.0, three_phase=three_phase)
    got = [lrs[0] for lrs in trace(s, total - 1)]
    anneal = _cos if strategy == "cos" else _lin
    want = one_cycle_reference(total, max_lr, 0.25, 10.0, 100.0, anneal, three_phase)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] == pytest.approx(max_lr / 10) and max(got) == pytest.approx(max_lr)
    assert got[-1] == pytest.approx(max_lr / 10 / 100)
    g = opt.param_groups[0]
    assert (g["initial_lr"], g["max_lr"], g["min_lr"]) == pytest.approx((0.04, 0.4, 0.0004))


def test_one_cycle_cycles_momentum_and_adam_beta1() -> None:
    total = 10
    sgd = make_optimizer("sgd", bases=[0.1])
    s = sched.OneCycleLR(sgd, max_lr=1.0, total_steps=total, base_momentum=0.8, max_momentum=0.9)
    moms = [sgd.param_groups[0]["momentum"]]
    for _ in range(total - 1):
        s.step()
        moms.append(sgd.param_groups[0]["momentum"])
    # momentum runs opposite to the rate: max -> base during warm-up, base -> max after
    want = [_cos(0.9, 0.8, t / 2) if t <= 2 else _cos(0.8, 0.9, (t - 2) / 7) for t in range(total)]
    np.testing.assert_allclose(moms, want, rtol=1e-12)

    adam = make_optimizer("adam", bases=[0.1])
    s = sched.OneCycleLR(adam, max_lr=1.0, total_steps=total, base_momentum=0.8, max_momentum=0.9)
    assert adam.param_groups[0]["betas"] == (0.9, 0.999)
    s.step()
    assert adam.param_groups[0]["betas"] == (pytest.approx(_cos(0.9, 0.8, 0.5)), 0.999)


def test_one_cycle_epochs_times_steps_and_overrun() -> None:
    s = sched.OneCycleLR(make_optimizer(), max_lr=[0.5, 0.2], epochs=2, steps_per_epoch=3, cycle_momentum=False)
    assert s.total_steps == 6
    assert s.get_last_lr() == pytest.approx([0.02, 0.008])
    for _ in range(6):
        s.step()
    with pytest.raises(ValueError, match="tried to step 7 times; total_steps is 6"):
        s.step()


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(max_lr=1.0), "either total_steps or both epochs and steps_per_epoch"),
    (dict(max_lr=1.0, total_steps=0), "positive integer total_steps, got 0"),
    (dict(max_lr=1.0, epochs=2, steps_per_epoch=-1), "positive integer steps_per_epoch, got -1"),
    (dict(max_lr=1.0, total_steps=10, pct_start=1.5), r"pct_start in \[0, 1\], got 1.5"),
    (dict(max_lr=1.0, total_steps=10, anneal_strategy="exp"), "'cos' or 'linear', got 'exp'"),
    (dict(max_lr=[1.0], total_steps=10), "OneCycleLR: expected 2 values for max_lr"),
    (dict(max_lr=1.0, total_steps=10, max_momentum=[0.9, 0.9, 0.9]), "OneCycleLR: expected 2 values for max_momentum"),
])
def test_one_cycle_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sched.OneCycleLR(make_optimizer(), **kwargs)


def test_sequential_warmup_then_cosine_switches_at_the_milestone() -> None:
    opt = make_optimizer()
    warm, T = 3, 6
    s = sched.SequentialLR(opt, [sched.LinearLR(opt, start_factor=0.2, total_iters=warm),
                                 sched.CosineAnnealingLR(opt, T_max=T, eta_min=1e-4)], milestones=[warm])

    def closed(b: float, t: int) -> float:
        if t < warm:
            return b * (0.2 + 0.8 * t / warm)
        return 1e-4 + (b - 1e-4) * (1 + math.cos(math.pi * (t - warm) / T)) / 2

    assert_trace(trace(s, warm + T + 2), closed)


def test_sequential_step_then_multistep() -> None:
    opt = make_optimizer()
    s = sched.SequentialLR(opt, [sched.StepLR(opt, step_size=2, gamma=0.5),
                                 sched.MultiStepLR(opt, milestones=[2, 4], gamma=0.1)], milestones=[5])

    def closed(b: float, t: int) -> float:
        return b * 0.5 ** (t // 2) if t < 5 else b * 0.1 ** sum(m <= t - 5 for m in (2, 4))

    assert_trace(trace(s, 11), closed)


def test_chained_schedulers_multiply_like_pytorch() -> None:
    opt = make_optimizer()
    warm = sched.LinearLR(opt, start_factor=0.5, total_iters=2)
    decay = sched.StepLR(opt, step_size=3, gamma=0.1)
    got = []
    for _ in range(7):
        got.append(opt.param_groups[0]["lr"])
        warm.step()
        decay.step()
    want = [0.1 * (0.5 + 0.5 * min(t, 2) / 2) * 0.1 ** (t // 3) for t in range(7)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_scheduler_errors() -> None:
    opt = make_optimizer()
    with pytest.raises(TypeError, match="StepLR: list is not an Optimizer"):
        sched.StepLR([], step_size=1)
    with pytest.raises(ValueError, match="step_size must be a positive integer, got 0"):
        sched.StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match=r"start_factor must be in \(0, 1\], got 0"):
        sched.LinearLR(opt, start_factor=0)
    with pytest.raises(ValueError, match="T_max must be a positive integer"):
        sched.CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(KeyError, match="initial_lr"):
        sched.StepLR(make_optimizer(), step_size=2, last_epoch=3)
    with pytest.raises(ValueError, match="2 schedulers and 0 milestones"):
        sched.SequentialLR(opt, [sched.StepLR(opt, 2), sched.StepLR(opt, 3)], milestones=[])
    other = make_optimizer()
    with pytest.raises(ValueError, match="scheduler 1 .* different optimizer"):
        sched.SequentialLR(opt, [sched.StepLR(opt, 2), sched.StepLR(other, 3)], milestones=[2])
    with pytest.raises(ValueError, match="lacks 'last_epoch'"):
        sched.StepLR(opt, 2).load_state_dict({"base_lrs": BASES})
    bad = sched.StepLR(opt, 2).state_dict()
    bad["base_lrs"] = [0.1]
    with pytest.raises(ValueError, match="base_lrs has 1 entries, the optimizer has 2 param groups"):
        sched.StepLR(opt, 2).load_state_dict(bad)


# ----- resume -----------------------------------------------------------------------------------
def _seq(opt):
    return sched.SequentialLR(opt, [sched.LinearLR(opt, start_factor=0.1, total_iters=3),
                                    sched.CosineAnnealingLR(opt, T_max=8)], milestones=[3])


RESUME = {
    "step": ("sgd", lambda o: sched.StepLR(o, step_size=2, gamma=0.3)),
    "multistep": ("sgd", lambda o: sched.MultiStepLR(o, milestones=[3, 5, 5])),
    "linear": ("sgd", lambda o: sched.LinearLR(o, start_factor=0.25, total_iters=8)),
    "cosine": ("sgd", lambda o: sched.CosineAnnealingLR(o, T_max=5, eta_min=1e-3)),
    "onecycle_adam": ("adam", lambda o: sched.OneCycleLR(o, max_lr=[1.0, 0.5], total_steps=12, three_phase=True)),
    "onecycle_sgd": ("sgd", lambda o: sched.OneCycleLR(o, max_lr=1.0, total_steps=12, anneal_strategy="linear")),
    "sequential": ("sgd", _seq),
}


@pytest.mark.parametrize("case", RESUME)
def test_resume_through_flattened_state_dicts_gives_the_same_schedule(case: str, tmp_path) -> None:
    kind, make = RESUME[case]

    def run(opt, s, n):
        out = []
        for _ in range(n):
            opt.step()
            s.step()
            out.append([(g["lr"], g.get("momentum"), g.get("betas")) for g in opt.param_groups])
        return out

    opt = make_optimizer(kind)
    straight = run(opt, make(opt), 10)

    opt = make_optimizer(kind)
    s = make(opt)
    first = run(opt, s, 4)
    mr.save_tree({"optimizer": opt.state_dict(), "scheduler": s.state_dict()}, tmp_path / "ck.npz")
    saved = mr.load_tree(tmp_path / "ck.npz")
    opt2 = make_optimizer(kind)
    s2 = make(opt2)  # build the scheduler first, then load both (PyTorch's order)
    opt2.load_state_dict(saved["optimizer"])
    s2.load_state_dict(saved["scheduler"])
    assert s2.last_epoch == 4 and s2.get_last_lr() == s.get_last_lr()
    assert first + run(opt2, s2, 6) == straight


def test_state_dict_holds_plain_values() -> None:
    opt = make_optimizer()
    s = _seq(opt)
    sd = s.state_dict()
    assert sd["last_epoch"] == 0 and sd["_milestones"] == [3]
    assert [inner["last_epoch"] for inner in sd["_schedulers"]] == [0, -1]
    plain = (int, float, bool, str, type(None))

    def only_plain(value: object) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, (str, int)) and only_plain(v) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return all(only_plain(v) for v in value)
        return isinstance(value, plain)

    assert only_plain(sd)


# ----- optional parity with torch.optim.lr_scheduler -------------------------------------------
PARITY = {
    "step": lambda m, o: m.StepLR(o, step_size=3, gamma=0.5),
    "multistep": lambda m, o: m.MultiStepLR(o, milestones=[2, 5, 5, 9], gamma=0.5),
    "linear": lambda m, o: m.LinearLR(o, start_factor=0.1, total_iters=6),
    "cosine": lambda m, o: m.CosineAnnealingLR(o, T_max=6, eta_min=1e-3),
    "onecycle": lambda m, o: m.OneCycleLR(o, max_lr=[1.0, 0.3], total_steps=15, three_phase=True),
    "onecycle_linear": lambda m, o: m.OneCycleLR(o, max_lr=0.5, epochs=4, steps_per_epoch=4,
                                                  anneal_strategy="linear", pct_start=0.4),
    "sequential": lambda m, o: m.SequentialLR(o, [m.LinearLR(o, start_factor=0.2, total_iters=3),
                                                  m.CosineAnnealingLR(o, T_max=5)], milestones=[3]),
}


@pytest.mark.parametrize("case", PARITY)
def test_parity_with_torch(case: str) -> None:
    torch = pytest.importorskip("torch")
    steps = 14
    opt = make_optimizer()
    s = PARITY[case](sched, opt)
    tgroups = [{"params": [torch.zeros(3, requires_grad=True)], "lr": lr} for lr in BASES]
    topt = torch.optim.SGD(tgroups, momentum=0.9)
    ts = PARITY[case](torch.optim.lr_scheduler, topt)
    for _ in range(steps):
        np.testing.assert_allclose(s.get_last_lr(), ts.get_last_lr(), rtol=1e-9)
        np.testing.assert_allclose([g["momentum"] for g in opt.param_groups],
                                   [g["momentum"] for g in topt.param_groups], rtol=1e-12)
        opt.step()
        topt.step()
        s.step()
        ts.step()
    assert s.last_epoch == ts.last_epoch
