"""nn.init: gains, the kaiming/xavier formulas (by the statistics of large draws), seeding, default layer init.

Bounds are derived from the formulas: for n samples the sample std of a normal is within about
3 / sqrt(2n) of the truth (relative), so a 1% tolerance on 300k samples passes the right formula
and fails any formula off by a factor like sqrt(2) (gain or fan mixed up).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import minires as mr
import minires.nn as nn
from minires.nn import init

SHAPE = (256, 128, 3, 3)  # fan_in = 128 * 9 = 1152, fan_out = 256 * 9 = 2304
FAN_IN, FAN_OUT = 1152, 2304


def _big(device: str, dtype: np.dtype = mr.float32) -> mr.Tensor:
    return mr.zeros(*SHAPE, dtype=dtype).to(device)


def test_calculate_gain_values() -> None:
    assert init.calculate_gain("linear") == 1.0
    assert init.calculate_gain("conv2d") == 1.0
    assert init.calculate_gain("sigmoid") == 1.0
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01**2)))
    assert init.calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(1 / 3))
    assert init.calculate_gain("selu") == pytest.approx(0.75)
    with pytest.raises(ValueError, match="unsupported nonlinearity"):
        init.calculate_gain("swish")


def test_fans_and_their_errors() -> None:
    assert init._calculate_fan_in_and_fan_out(mr.zeros(*SHAPE)) == (FAN_IN, FAN_OUT)
    assert init._calculate_fan_in_and_fan_out(mr.zeros(10, 20)) == (20, 10)
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.kaiming_normal_(mr.zeros(5))
    with pytest.raises(ValueError, match="fan_in, fan_out"):
        init.kaiming_normal_(mr.zeros(3, 3), mode="fan_avg")


@pytest.mark.parametrize(
    ("kwargs", "expected_std"),
    [
        ({}, math.sqrt(2 / FAN_IN)),  # leaky_relu with a=0 -> gain sqrt(2)
        ({"mode": "fan_out", "nonlinearity": "relu"}, math.sqrt(2 / FAN_OUT)),  # torchvision ResNet's choice
        ({"a": 1.0, "nonlinearity": "leaky_relu"}, 1 / math.sqrt(FAN_IN)),  # gain sqrt(2 / (1 + 1))
        ({"nonlinearity": "tanh"}, (5 / 3) / math.sqrt(FAN_IN)),
    ],
)
def test_kaiming_normal_std(device: str, kwargs: dict, expected_std: float) -> None:
    t = _big(device)
    assert init.kaiming_normal_(t, **kwargs) is t
    w = t.numpy().astype(np.float64)
    assert w.std() == pytest.approx(expected_std, rel=0.01)
    assert abs(w.mean()) < 5 * expected_std / math.sqrt(w.size)


@pytest.mark.parametrize(
    ("kwargs", "expected_bound"),
    [
        ({}, math.sqrt(6 / FAN_IN)),
        ({"a": math.sqrt(5)}, 1 / math.sqrt(FAN_IN)),  # the default of Conv2d and Linear
        ({"mode": "fan_out", "nonlinearity": "relu"}, math.sqrt(6 / FAN_OUT)),
    ],
)
def test_kaiming_uniform_bound_and_std(device: str, kwargs: dict, expected_bound: float) -> None:
    w = init.kaiming_uniform_(_big(device), **kwargs).numpy().astype(np.float64)
    assert np.abs(w).max() <= expected_bound
    assert np.abs(w).max() > 0.999 * expected_bound  # 300k draws reach the edge
    assert w.std() == pytest.approx(expected_bound / math.sqrt(3), rel=0.01)


def test_xavier_uniform_and_normal(device: str) -> None:
    gain = init.calculate_gain("relu")
    bound = gain * math.sqrt(6 / (FAN_IN + FAN_OUT))
    w = init.xavier_uniform_(_big(device), gain=gain).numpy().astype(np.float64)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.999 * bound
    w = init.xavier_normal_(_big(device)).numpy().astype(np.float64)
    assert w.std() == pytest.approx(math.sqrt(2 / (FAN_IN + FAN_OUT)), rel=0.01)


def test_normal_uniform_constant_zeros_ones(device: str) -> None:
    w = init.normal_(_big(device), mean=3.0, std=0.5).numpy().astype(np.float64)
    assert w.mean() == pytest.approx(3.0, abs=0.01) and w.std() == pytest.approx(0.5, rel=0.01)
    w = init.uniform_(_big(device), -2.0, 6.0).numpy()
    assert w.min() >= -2.0 and w.max() <= 6.0 and w.mean() == pytest.approx(2.0, abs=0.02)
    t = mr.zeros(3, 4).to(device)
    np.testing.assert_array_equal(init.constant_(t, 0.25).numpy(), np.full((3, 4), 0.25))
    np.testing.assert_array_equal(init.ones_(t).numpy(), np.ones((3, 4)))
    np.testing.assert_array_equal(init.zeros_(t).numpy(), np.zeros((3, 4)))


def test_trunc_normal_stays_in_range_with_truncated_std(device: str) -> None:
    w = init.trunc_normal_(_big(device), std=1.0, a=-2.0, b=2.0).numpy().astype(np.float64)
    assert w.min() >= -2.0 and w.max() <= 2.0
    # the std of N(0, 1) truncated to [-2, 2]: sqrt(1 - 2 * 2 * phi(2) / (Phi(2) - Phi(-2)))
    phi2 = math.exp(-2) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    assert w.std() == pytest.approx(math.sqrt(1 - 4 * phi2 / mass), rel=0.01)


def test_init_keeps_dtype_and_array_in_place(device: str) -> None:
    t = mr.zeros(64, 32, dtype=mr.float64).to(device)
    array = t.data
    init.kaiming_uniform_(t)
    assert t.data is array and t.dtype == np.float64 and t.device == device
    empty = mr.zeros(0, 3)
    assert init.kaiming_normal_(empty) is empty  # zero elements: a no-op


def test_manual_seed_makes_init_reproducible() -> None:
    mr.manual_seed(7)
    a = init.kaiming_normal_(mr.zeros(16, 8)).numpy().copy()
    mr.manual_seed(7)
    b = init.kaiming_normal_(mr.zeros(16, 8)).numpy().copy()
    c = init.kaiming_normal_(mr.zeros(16, 8)).numpy().copy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)
    mr.manual_seed(7)
    conv_a = nn.Conv2d(3, 4, 3).weight.numpy().copy()
    mr.manual_seed(7)
    np.testing.assert_array_equal(nn.Conv2d(3, 4, 3).weight.numpy(), conv_a)
    own = np.random.default_rng(3)
    d = init.normal_(mr.zeros(5), generator=own).numpy()
    np.testing.assert_allclose(d, np.random.default_rng(3).normal(0, 1, 5).astype(np.float32))


@pytest.mark.parametrize(
    ("layer", "fan_in"),
    [
        (lambda: nn.Conv2d(16, 32, 3), 16 * 9),
        (lambda: nn.Conv2d(8, 64, (3, 5), groups=4), 2 * 15),
        (lambda: nn.Linear(100, 50), 100),
    ],
)
def test_default_layer_init_bounds(layer: object, fan_in: int) -> None:
    m = layer()  # type: ignore[operator]
    bound = 1 / math.sqrt(fan_in)
    w, b = m.weight.numpy().astype(np.float64), m.bias.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.06)
    assert np.abs(b).max() <= bound and np.abs(b).std() > 0
    assert m.weight.dtype == np.float32 and m.weight.requires_grad


def test_batchnorm_default_init() -> None:
    bn = nn.BatchNorm2d(5)
    np.testing.assert_array_equal(bn.weight.numpy(), np.ones(5))
    np.testing.assert_array_equal(bn.bias.numpy(), np.zeros(5))
    np.testing.assert_array_equal(bn.running_mean.numpy(), np.zeros(5))
    np.testing.assert_array_equal(bn.running_var.numpy(), np.ones(5))
    assert bn.num_batches_tracked.item() == 0 and bn.num_batches_tracked.dtype == np.int64


def test_layers_accept_device_and_dtype(device: str) -> None:
    m = nn.Conv2d(2, 3, 3, device=device, dtype=mr.float64)
    assert m.weight.device == device and m.weight.dtype == np.float64
    bn = nn.BatchNorm1d(4, device=device, dtype=mr.float64)
    assert bn.running_var.dtype == np.float64 and bn.num_batches_tracked.dtype == np.int64
    assert bn.num_batches_tracked.device == device
