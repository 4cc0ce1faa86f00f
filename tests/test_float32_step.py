"""A float32 training step stays float32: no op's forward or backward makes a float64 array.

NumPy promotes silently (``float32_array * np.float64(2)`` is float32, but ``float32_array + float64_array``
and a float64 scalar array from a reduction are not), and a float64 intermediate doubles the memory
traffic of every pass after it. Every ``Function``'s forward and backward is wrapped here to record the
dtype of each floating array it returns, for whole training steps of the nets people train, through both
convolution algorithms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import minires as mr
import minires.nn.functional as F
from minires import backends, optim
from minires.autograd.function import Function
from minires.models import resnet18, resnet20
from minires.nn.utils import clip_grad_norm_


def _functions(cls: type = Function) -> list[type]:
    """Every Function subclass (built-in ops and the tests' own), each once."""
    return list(dict.fromkeys(c for s in cls.__subclasses__() for c in (s, *_functions(s))))


def _floating_arrays(value: Any) -> list[Any]:
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in _floating_arrays(v)]
    dtype = getattr(value, "dtype", None)
    return [value] if dtype is not None and np.issubdtype(dtype, np.floating) else []


def _wrap(cls: type, log: list[tuple[str, str, np.dtype]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrap cls's own forward/backward so that ``log`` gets (op, phase, dtype) of each floating output."""
    for phase in ("forward", "backward"):
        if phase not in cls.__dict__:
            continue
        original = cls.__dict__[phase].__func__ if isinstance(cls.__dict__[phase], staticmethod) else cls.__dict__[phase]

        def wrapped(*args: Any, _fn: Any = original, _name: str = cls.__name__, _phase: str = phase) -> Any:
            out = _fn(*args)
            log.extend((_name, _phase, np.dtype(a.dtype)) for a in _floating_arrays(out))
            return out

        monkeypatch.setattr(cls, phase, staticmethod(wrapped))


@pytest.fixture
def dtype_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, np.dtype]]:
    """Every Function wrapped: the log of (op, phase, dtype) of each floating array they return."""
    log: list[tuple[str, str, np.dtype]] = []
    for cls in _functions():
        _wrap(cls, log, monkeypatch)
    return log


def _train_steps(model: Any, size: int, steps: int = 2) -> None:
    rng = np.random.default_rng(0)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    model.train()
    for _ in range(steps):
        x = mr.tensor(rng.standard_normal((4, 3, size, size), dtype=np.float32))
        y = mr.tensor(rng.integers(0, 10, size=4))
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    assert loss.dtype == mr.float32


@pytest.mark.parametrize("algorithm", ["auto", "im2col", "winograd"])
def test_resnet20_step_makes_no_float64(dtype_log, algorithm: str) -> None:
    model = resnet20(num_classes=10)
    with backends.use_conv_algorithm(algorithm):
        _train_steps(model, size=16)
    assert dtype_log, "the wrapper saw no op"
    leaks = sorted({(name, phase, str(dt)) for name, phase, dt in dtype_log if dt != np.float32})
    assert not leaks, f"float64 (or other) arrays in a float32 step: {leaks}"
    for name, p in model.named_parameters():
        assert p.dtype == mr.float32 and p.grad.dtype == mr.float32, name
    for name, b in model.named_buffers():
        if np.issubdtype(b.numpy().dtype, np.floating):
            assert b.dtype == mr.float32, name


def test_resnet18_eval_and_train_make_no_float64(dtype_log) -> None:
    model = resnet18(num_classes=10, stem="cifar")
    _train_steps(model, size=8, steps=1)
    model.eval()
    with mr.no_grad():
        model(mr.tensor(np.ones((2, 3, 8, 8), np.float32)))
    leaks = sorted({(name, phase, str(dt)) for name, phase, dt in dtype_log if dt != np.float32})
    assert not leaks, f"float64 (or other) arrays in a float32 step: {leaks}"


def test_the_wrapper_sees_a_planted_float64_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself: an op that returns float64 from float32 input is reported, its float32 backward not."""

    class Leaky(Function):
        @staticmethod
        def forward(ctx: Any, x: Any) -> Any:
            return x.astype(np.float64)

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            return g.astype(np.float32)

    log: list[tuple[str, str, np.dtype]] = []
    _wrap(Leaky, log, monkeypatch)
    x = mr.tensor(np.ones(3, np.float32), requires_grad=True)
    Leaky.apply(x).sum().backward()
    assert log == [("Leaky", "forward", np.dtype(np.float64)), ("Leaky", "backward", np.dtype(np.float32))]
