"""Option A's zero channels: after the real ones ("end", the default) or half on each side ("split")."""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
from minires.models import CifarResNet, OptionAShortcut, resnet20


@pytest.mark.parametrize(("padding", "before"), [("end", 0), ("split", 8)])
def test_where_the_zero_channels_go(padding: str, before: int) -> None:
    x = np.random.default_rng(0).normal(size=(2, 16, 6, 5))
    out = OptionAShortcut(16, 32, stride=2, padding=padding)(mr.tensor(x)).numpy()
    assert out.shape == (2, 32, 3, 3)
    assert np.array_equal(out[:, before:before + 16], x[:, :, ::2, ::2])
    assert not out[:, :before].any() and not out[:, before + 16:].any()


def test_odd_extra_channel_goes_after() -> None:
    out = OptionAShortcut(2, 5, stride=1, padding="split")(mr.ones(1, 2, 1, 1)).numpy().ravel()
    assert out.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]


def test_nets_pass_the_choice_on_and_default_to_end() -> None:
    assert {m.padding for m in resnet20().modules() if isinstance(m, OptionAShortcut)} == {"end"}
    net = resnet20(shortcut_padding="split")
    assert {m.padding for m in net.modules() if isinstance(m, OptionAShortcut)} == {"split"}
    assert "padding='split'" in repr(net.layer2[0].downsample)
    pre = CifarResNet(8, preact=True, shortcut_padding="split")
    assert {m.padding for m in pre.modules() if isinstance(m, OptionAShortcut)} == {"split"}


def test_bad_padding_is_refused() -> None:
    with pytest.raises(ValueError, match="OptionAShortcut: padding must be 'end' or 'split', got 'middle'"):
        OptionAShortcut(16, 32, padding="middle")
    with pytest.raises(ValueError, match="CifarResNet: shortcut_padding must be 'end' or 'split', got 'both'"):
        CifarResNet(20, shortcut_padding="both")
