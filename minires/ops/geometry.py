"""Sliding-window geometry, written once for every windowed op (in the spirit of ``chainer/utils/conv.py``).

Convolution, pooling, im2col / col2im, the faster conv paths, the CUDA kernels, the ``nn`` layers and
``minires.testing`` all need the same arithmetic: turn ``3`` or ``(3, 1)`` into a pair, resolve
``padding="same"``, and find how many windows fit. It lives here, and nowhere else.

Along one spatial dim, with padding ``p0`` before and ``p1`` after, a kernel of ``k`` taps ``d`` apart
reaches ``d*(k - 1) + 1`` elements, and windows start every ``s`` elements of the padded input::

    out = floor((size + p0 + p1 - d*(k - 1) - 1) / s) + 1          (ceil instead of floor in ceil_mode)

In ceil mode (pooling, whose padding is at most half the kernel) PyTorch drops the last window when it
would *start* past the input and the leading padding, i.e. when ``(out - 1)*s >= size + p0``; so every
window starts on real data or on the leading padding. :class:`Window2d` is the validated, frozen result for one 2-D input size.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

IntPair = int | tuple[int, int]
Padding4 = tuple[int, int, int, int]  # (top, bottom, left, right)


def _as_int(value: Any) -> int:
    """A Python int from an int-like value (numpy ints too); floats, bools and strings raise TypeError."""
    if isinstance(value, bool):
        raise TypeError(f"expected an int, got {value!r}")
    return operator.index(value)


def pair(op: str, what: str, value: Any, minimum: int = 0) -> tuple[int, int]:
    """An int, or a sequence of one or two ints, as a pair ``(h, w)``, each at least ``minimum``.

    ``pair("conv2d", "stride", 2, 1) == (2, 2)``; errors name the op and the argument:
    ``conv2d: stride must be >= 1, got 0``. Booleans are refused (``True`` is not a size).
    """
    wrong = f"{op}: {what} must be an int or a pair of ints, got {value!r}"
    items = tuple(value) if hasattr(value, "__len__") and not isinstance(value, str) else (value,)
    try:
        values = tuple(_as_int(v) for v in items)
    except TypeError:
        raise TypeError(wrong) from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise ValueError(wrong)
    if min(values) < minimum:
        raise ValueError(f"{op}: {what} must be >= {minimum}, got {value!r}")
    return values  # type: ignore[return-value]


def output_length(size: int, kernel: int, stride: int, pad_before: int, pad_after: int, dilation: int, ceil_mode: bool = False) -> int:
    """Number of windows along one dim (the rule in the module docstring); may be < 1 for a too-small input."""
    span = size + pad_before + pad_after - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad_before:  # the last window must start inside input or leading pad
        out -= 1
    return out


def same_padding(kernel: tuple[int, int], dilation: tuple[int, int]) -> Padding4:
    """Padding that keeps a stride-1 output the input's size; an odd total puts the extra row/column
    at the bottom/right, as PyTorch does."""
    total = (dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1))
    return (total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2)


def padding4(
    op: str, padding: Any, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int], strings: bool = False
) -> Padding4:
    """``padding`` (an int or a pair; with ``strings`` also "same" or "valid") as (top, bottom, left, right)."""
    if isinstance(padding, str):
        if not strings:
            raise TypeError(f"{op}: padding must be an int or a pair of ints, got {padding!r}")
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{op}: padding='same' is not supported for strided convolutions (stride {stride})")
            return same_padding(kernel, dilation)
        raise ValueError(f"{op}: padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
    ph, pw = pair(op, "padding", padding, 0)
    return (ph, ph, pw, pw)


@dataclass(frozen=True)
class Window2d:
    """A 2-D sliding window over an input of ``input_size`` (H, W), checked once when it is made.

    ``kernel``, ``stride`` and ``dilation`` are (h, w) pairs, ``padding`` is (top, bottom, left, right),
    ``output_size`` (oH, oW) follows the rule in the module docstring (``ceil_mode`` as pooling's).
    ``op`` names the op in errors. Build one from user arguments with :meth:`of`.
    """

    input_size: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: Padding4 = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    op: str = field(default="window", compare=False)
    output_size: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        for what, value, length, minimum in (
            ("input_size", self.input_size, 2, 0),
            ("kernel", self.kernel, 2, 1),
            ("stride", self.stride, 2, 1),
            ("padding", self.padding, 4, 0),
            ("dilation", self.dilation, 2, 1),
        ):
            try:
                ints = tuple(_as_int(v) for v in value)
            except TypeError:
                ints = ()
            if len(ints) != length or min(ints) < minimum:
                raise ValueError(f"{self.op}: {what} must be {length} ints >= {minimum}, got {value!r}")
            object.__setattr__(self, what, ints)
        (h, w), (kh, kw), (sh, sw), (pt, pb, pl, pr), (dh, dw) = (
            self.input_size, self.kernel, self.stride, self.padding, self.dilation
        )
        out = (output_length(h, kh, sh, pt, pb, dh, self.ceil_mode), output_length(w, kw, sw, pl, pr, dw, self.ceil_mode))
        if min(out) < 1:
            raise ValueError(
                f"{self.op}: input size {self.input_size} (padded {self.padded_size}) is smaller than the dilated "
                f"kernel {self.reach} (kernel {self.kernel}, dilation {self.dilation})"
            )
        object.__setattr__(self, "output_size", out)

    @classmethod
    def of(
        cls,
        op: str,
        input_size: tuple[int, ...],
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        ceil_mode: bool = False,
        padding_strings: bool = False,
    ) -> Window2d:
        """Parse user arguments (ints or pairs) into a checked window.

        ``stride=None`` (or ``()``) means "the kernel size", pooling's default; ``padding_strings``
        allows conv's "same" and "valid".
        """
        kernel = pair(op, "kernel_size", kernel_size, 1)
        no_stride = stride is None or (hasattr(stride, "__len__") and not isinstance(stride, str) and len(stride) == 0)
        stride2 = kernel if no_stride else pair(op, "stride", stride, 1)
        dilation2 = pair(op, "dilation", dilation, 1)
        pads = padding4(op, padding, kernel, stride2, dilation2, padding_strings)
        size = (int(input_size[0]), int(input_size[1]))
        return cls(size, kernel, stride2, pads, dilation2, bool(ceil_mode), op)

    @property
    def reach(self) -> tuple[int, int]:
        """Input elements one dilated kernel spans: ``d*(k - 1) + 1`` per dim."""
        return (self.dilation[0] * (self.kernel[0] - 1) + 1, self.dilation[1] * (self.kernel[1] - 1) + 1)

    @property
    def padded_size(self) -> tuple[int, int]:
        """(H + top + bottom, W + left + right)."""
        pt, pb, pl, pr = self.padding
        return (self.input_size[0] + pt + pb, self.input_size[1] + pl + pr)

    @property
    def pad_before(self) -> tuple[int, int]:
        """(top, left): where the input starts inside the padded input."""
        return (self.padding[0], self.padding[2])

    @property
    def extent(self) -> tuple[int, int]:
        """Rows and columns from the padded input's origin that the windows cover: ``(out - 1)*s + reach``.

        In ceil mode this may exceed :attr:`padded_size` (the last window hangs past the padding)."""
        return (
            (self.output_size[0] - 1) * self.stride[0] + self.reach[0],
            (self.output_size[1] - 1) * self.stride[1] + self.reach[1],
        )

    @property
    def symmetric_padding(self) -> tuple[int, int] | None:
        """(pH, pW) when top == bottom and left == right, else None."""
        pt, pb, pl, pr = self.padding
        return (pt, pl) if (pt, pl) == (pb, pr) else None


__all__ = ["IntPair", "Padding4", "Window2d", "output_length", "pair", "padding4", "same_padding"]
