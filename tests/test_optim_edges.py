"""Optimizer and schedule edges that mutation testing (docs/mutation_testing.md) found unguarded: PyTorch's
default hyper-parameters, arguments AdamW passes on, the boundary values each check accepts, and
``zero_grad`` past a parameter without a gradient."""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
from minires import optim

SCHED = optim.lr_scheduler


def _params(n: int = 2) -> list[mr.Tensor]:
    return [mr.tensor(np.ones(3), requires_grad=True) for _ in range(n)]


def test_defaults_are_pytorchs() -> None:
    """torch.optim's documented defaults, so code ported without arguments behaves the same."""
    sgd = optim.SGD(_params()).param_groups[0]
    assert (sgd["lr"], sgd["momentum"], sgd["dampening"], sgd["weight_decay"], sgd["nesterov"]) == (1e-3, 0.0, 0.0, 0.0, False)
    for cls, decay in ((optim.Adam, 0.0), (optim.AdamW, 1e-2)):
        group = cls(_params()).param_groups[0]
        assert (group["lr"], tuple(group["betas"]), group["eps"], group["weight_decay"]) == (1e-3, (0.9, 0.999), 1e-8, decay), cls
        assert group["amsgrad"] is False and group["maximize"] is False
    opt = optim.SGD(_params(), lr=1.0)
    assert SCHED.StepLR(opt, step_size=3).gamma == 0.1
    assert SCHED.MultiStepLR(opt, milestones=[2]).gamma == 0.1


def test_adamw_passes_amsgrad_and_maximize_on() -> None:
    group = optim.AdamW(_params(), amsgrad=True, maximize=True).param_groups[0]
    assert group["amsgrad"] is True and group["maximize"] is True
    p = mr.tensor(np.zeros(1), requires_grad=True)
    opt = optim.AdamW([p], lr=0.1, weight_decay=0.0, maximize=True)
    p.grad = mr.tensor(np.ones(1))
    opt.step()
    assert p.numpy()[0] == pytest.approx(0.1, rel=1e-6)  # maximize: up the gradient, by lr on the first Adam step


def test_zero_grad_reaches_parameters_after_one_without_a_gradient() -> None:
    first, second = _params()
    second.grad = mr.tensor(np.ones(3))
    opt = optim.SGD([first, second], lr=0.1)
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(second.grad.numpy(), 0.0)
    opt.zero_grad()
    assert first.grad is None and second.grad is None


def test_boundary_values_are_accepted() -> None:
    """The smallest or largest value each check allows is allowed (PyTorch allows them too)."""
    optim.SGD(_params(), lr=0.0)
    optim.Adam(_params(), betas=(0.0, 0.0))
    opt = optim.SGD(_params(), lr=1.0, momentum=0.9)
    assert SCHED.CosineAnnealingLR(opt, T_max=1).T_max == 1
    linear = SCHED.LinearLR(opt, start_factor=0.5, end_factor=0.0, total_iters=1)
    linear.step()
    assert opt.param_groups[0]["lr"] == 0.0
    assert SCHED.OneCycleLR(opt, max_lr=1.0, epochs=1, steps_per_epoch=5).total_steps == 5
    assert SCHED.OneCycleLR(opt, max_lr=1.0, epochs=5, steps_per_epoch=1).total_steps == 5
    for pct in (0.0, 1.0):
        SCHED.OneCycleLR(opt, max_lr=1.0, total_steps=10, pct_start=pct)


def test_values_past_the_boundaries_are_refused() -> None:
    opt = optim.SGD(_params(), lr=1.0, momentum=0.9)
    with pytest.raises(ValueError, match=r"LinearLR: end_factor must be in \[0, 1\], got 1.5"):
        SCHED.LinearLR(opt, end_factor=1.5)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="LinearLR"):
            SCHED.LinearLR(opt, total_iters=bad)
    with pytest.raises(ValueError, match="give either total_steps or both epochs and steps_per_epoch"):
        SCHED.OneCycleLR(opt, max_lr=1.0, epochs=3)
    with pytest.raises(ValueError, match="positive integer epochs, got 0"):
        SCHED.OneCycleLR(opt, max_lr=1.0, epochs=0, steps_per_epoch=3)
    with pytest.raises(ValueError, match="positive integer steps_per_epoch, got 0"):
        SCHED.OneCycleLR(opt, max_lr=1.0, epochs=3, steps_per_epoch=0)
    with pytest.raises(TypeError, match="OneCycleLR: list is not an Optimizer"):
        SCHED.OneCycleLR([], max_lr=1.0, total_steps=3)
