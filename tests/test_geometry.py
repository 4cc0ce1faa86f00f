"""minires.ops.geometry: the one window-geometry module (pair parsing, output sizes, padding, Window2d)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import minires as mr
import minires.nn.functional as F
from minires.ops.conv import Conv2dFunction
from minires.ops.geometry import Window2d, output_length, padding4, pair, same_padding
from minires.ops.pooling import AvgPool2dFunction, MaxPool2dFunction


def test_pair_accepts_ints_pairs_and_numpy_ints() -> None:
    assert pair("op", "stride", 2) == (2, 2)
    assert pair("op", "stride", (1, 3)) == (1, 3)
    assert pair("op", "stride", [4]) == (4, 4)
    assert pair("op", "stride", np.int64(5)) == (5, 5)
    assert all(type(v) is int for v in pair("op", "stride", (np.int32(1), np.int64(2))))


@pytest.mark.parametrize(
    "value,error,match",
    [
        (True, TypeError, r"conv2d: stride must be an int or a pair of ints, got True"),
        ((1, False), TypeError, r"conv2d: stride must be an int or a pair of ints"),
        (2.0, TypeError, r"conv2d: stride must be an int or a pair of ints, got 2.0"),
        ("2", TypeError, r"conv2d: stride must be an int or a pair"),
        ((1, 2, 3), ValueError, r"conv2d: stride must be an int or a pair of ints, got \(1, 2, 3\)"),
        ((), ValueError, r"conv2d: stride must be an int or a pair"),
        (0, ValueError, r"conv2d: stride must be >= 1, got 0"),
        ((1, 0), ValueError, r"conv2d: stride must be >= 1, got \(1, 0\)"),
    ],
)
def test_pair_errors_name_the_op_and_argument(value, error, match) -> None:
    with pytest.raises(error, match=match):
        pair("conv2d", "stride", value, 1)


def count_windows(size: int, kernel: int, stride: int, before: int, after: int, dilation: int, ceil_mode: bool) -> int:
    """Windows counted one by one over a padded line of size + before + after positions (PyTorch's rule):
    a window is kept when it fits; in ceil mode also a partial one when it starts inside input or leading pad."""
    reach = dilation * (kernel - 1)
    last = before + size + after - 1
    n = 0
    for start in range(0, last + 1, stride):
        fits = start + reach <= last
        partial = ceil_mode and start > 0 and start - stride + reach < last and start < before + size
        n += fits or partial
    return n


@given(
    size=st.integers(1, 12),
    kernel=st.integers(1, 4),
    stride=st.integers(1, 4),
    before=st.integers(0, 3),
    after=st.integers(0, 3),
    dilation=st.integers(1, 3),
    ceil_mode=st.booleans(),
)
def test_output_length_matches_brute_force(size, kernel, stride, before, after, dilation, ceil_mode) -> None:
    assume(not ceil_mode or before == after <= kernel // 2)  # ceil mode is pooling's: symmetric, at most half the kernel
    if size + before + after >= dilation * (kernel - 1) + 1:
        assert output_length(size, kernel, stride, before, after, dilation, ceil_mode) == count_windows(
            size, kernel, stride, before, after, dilation, ceil_mode
        )


def test_ceil_mode_drops_a_window_that_would_start_in_the_trailing_padding() -> None:
    # size 5, kernel 3, stride 2, padding 1 each side: floor 3 windows; ceil would give 4, the 4th starting
    # at padded position 6 = past the input (positions 1..5) -> dropped, as in PyTorch
    assert output_length(5, 3, 2, 1, 1, 1, ceil_mode=False) == 3
    assert output_length(5, 3, 2, 1, 1, 1, ceil_mode=True) == 3
    assert output_length(6, 3, 2, 1, 1, 1, ceil_mode=True) == 4  # the 4th starts at 6, inside the input (1..6)
    assert output_length(3, 3, 4, 1, 1, 1, ceil_mode=True) == 1  # the 2nd would start at 4, the first trailing pad


def test_same_padding_puts_the_odd_extra_at_the_bottom_right() -> None:
    assert same_padding((3, 4), (1, 1)) == (1, 1, 1, 2)
    assert same_padding((3, 3), (2, 1)) == (2, 2, 1, 1)
    for k, d in [((3, 4), (1, 1)), ((2, 5), (3, 2))]:
        w = Window2d((7, 9), k, (1, 1), same_padding(k, d), d)
        assert w.output_size == (7, 9)


def test_padding4_strings_only_where_allowed() -> None:
    assert padding4("conv2d", "valid", (3, 3), (2, 2), (1, 1), strings=True) == (0, 0, 0, 0)
    assert padding4("conv2d", (1, 2), (3, 3), (1, 1), (1, 1)) == (1, 1, 2, 2)
    with pytest.raises(TypeError, match=r"max_pool2d: padding must be an int or a pair of ints, got 'same'"):
        padding4("max_pool2d", "same", (3, 3), (1, 1), (1, 1))
    with pytest.raises(ValueError, match=r"conv2d: padding='same' is not supported for strided convolutions \(stride \(1, 2\)\)"):
        padding4("conv2d", "same", (3, 3), (1, 2), (1, 1), strings=True)


def test_window_is_frozen_and_checked_once() -> None:
    w = Window2d.of("max_pool2d", (5, 6), 3, None, 1, 1, ceil_mode=True)
    assert (w.kernel, w.stride, w.padding, w.output_size) == ((3, 3), (3, 3), (1, 1, 1, 1), (2, 3))
    assert w.reach == (3, 3) and w.padded_size == (7, 8) and w.pad_before == (1, 1)
    assert w.extent == (6, 9) and w.symmetric_padding == (1, 1)
    assert Window2d((4, 4), (2, 2), padding=(0, 1, 0, 0)).symmetric_padding is None
    with pytest.raises(AttributeError):
        w.stride = (1, 1)  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"im2col: input size \(2, 2\) \(padded \(2, 2\)\) is smaller than the dilated kernel"):
        Window2d.of("im2col", (2, 2), 3, dilation=2)
    with pytest.raises(ValueError, match=r"window: padding must be 4 ints >= 0, got \(1, 1\)"):
        Window2d((4, 4), (2, 2), padding=(1, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"window: stride must be 2 ints >= 1"):
        Window2d((4, 4), (2, 2), stride=(0, 1))


def test_functions_called_directly_check_their_arguments() -> None:
    """The checks live with the op: calling the Function itself (not conv2d) still gets op-named errors."""
    x = mr.zeros((1, 2, 5, 5))
    w = mr.zeros((3, 2, 3, 3))
    with pytest.raises(ValueError, match=r"conv2d: input has 2 channels, weight expects 4"):
        Conv2dFunction.apply(x, mr.zeros((3, 4, 3, 3)), None, 1, 0, 1, 1)
    with pytest.raises(ValueError, match=r"conv2d: stride must be >= 1"):
        Conv2dFunction.apply(x, w, None, 0, 0, 1, 1)
    with pytest.raises(ValueError, match=r"conv2d: input size \(5, 5\) \(padded \(5, 5\)\) is smaller than the dilated kernel"):
        Conv2dFunction.apply(x, w, None, 1, 0, 3, 1)
    with pytest.raises(ValueError, match=r"conv2d: bias must have shape \(3,\)"):
        Conv2dFunction.apply(x, w, mr.zeros(2), 1, 0, 1, 1)
    with pytest.raises(ValueError, match=r"conv2d: groups=2 does not divide the 3 output channels"):
        Conv2dFunction.apply(x, mr.zeros((3, 1, 3, 3)), None, 1, 0, 1, 2)
    with pytest.raises(ValueError, match=r"max_pool2d: padding \(2, 2\) must be at most half"):
        MaxPool2dFunction.apply(x, 2, None, 2, 1, False)
    with pytest.raises(ValueError, match=r"avg_pool2d: kernel_size must be >= 1"):
        AvgPool2dFunction.apply(x, 0, None, 0, False, True, None)
    # and the direct call computes what the wrapper does, with the same gradient
    x = mr.randn(2, 2, 6, 6, dtype=mr.float64, requires_grad=True)
    w = mr.randn(3, 2, 3, 3, dtype=mr.float64, requires_grad=True)
    assert mr.gradcheck(lambda a, b: Conv2dFunction.apply(a, b, None, 2, 1, 1, 1), [x, w])
    np.testing.assert_array_equal(
        Conv2dFunction.apply(x, w, None, 1, "same", 1, 1).numpy(), F.conv2d(x, w, padding="same").numpy()
    )
