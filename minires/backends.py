"""Which algorithm computes an op, and the switch to force one (as ``torch.backends``).

``minires.backends.conv_algorithm`` picks the convolution algorithm (read on every call)::

    "auto"      (default) Winograd F(2x2, 3x3) where :func:`choose_conv_algorithm`'s rule says, else im2col
    "im2col"    always im2col + GEMM (minires/ops/conv.py): the reference and teaching path
    "winograd"  Winograd (minires/ops/winograd.py) for every shape it can compute, im2col for the rest

The environment variable ``MINIRES_CONV_ALGO`` sets the starting value, e.g. ``MINIRES_CONV_ALGO=im2col
minires-train``. In code: ``mr.backends.conv_algorithm = "im2col"``, or for one block
``with mr.backends.use_conv_algorithm("im2col"): ...``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import numpy as np

CONV_ALGORITHMS = ("auto", "im2col", "winograd")

conv_algorithm: str = os.environ.get("MINIRES_CONV_ALGO", "auto")

_WINOGRAD_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _checked(value: Any) -> str:
    if value not in CONV_ALGORITHMS:
        raise ValueError(
            f"minires.backends.conv_algorithm (or MINIRES_CONV_ALGO) must be one of {', '.join(CONV_ALGORITHMS)}; got {value!r}"
        )
    return value


# The shape rule under "auto" (see choose_conv_algorithm): Winograd's tile transforms are memory passes that
# pay off only when the GEMMs they shrink are big enough. Measured with benchmarks/conv_algorithms.py.
WINOGRAD_MIN_CHANNELS = 8  # input channels: a stem's 1 or 3 channels make 16 GEMMs with K = 1..3
WINOGRAD_MIN_SIDE = 8  # output height and width: 2x2 and 4x4 maps are 1-4 tiles per image
WINOGRAD_MIN_WORK = 2048  # oH * oW * C per image: below it (e.g. 8x8 with 16 channels) the two tie


def choose_conv_algorithm(
    xp: Any,
    dtype: Any,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
    in_channels: int,
    output_size: tuple[int, int],
) -> str:
    """``"winograd"`` or ``"im2col"`` for one convolution, by ``conv_algorithm`` and the layer's shape.

    The rule under "auto": Winograd for a shape it computes (3x3, stride 1, dilation 1, groups 1, padding
    at most 2) on the CPU (numpy) in float32/float64, when the layer is big enough for its transforms
    to pay: at least ``WINOGRAD_MIN_CHANNELS`` input channels, outputs at least ``WINOGRAD_MIN_SIDE`` on
    each side and ``oH * oW * C >= WINOGRAD_MIN_WORK``. Measured (``benchmarks/conv_algorithms.py``,
    forward + backward, float32, batch 64 and 128): Winograd takes 0.58-0.78x im2col's time from 16x16
    maps with 16+ channels and from 8x8 maps with 32+ channels; im2col is faster for 1- and 3-channel
    stems (2-5x), for 2x2 maps (1.2-2.9x) and for most 4x4 maps, and the two tie at 8x8 with 16
    channels. So the CIFAR ResNets' 16-64-channel 32x32-8x8 layers run Winograd, their stems, the
    digits net's 8x8 and smaller maps and ResNet-18's 4x4 stage im2col. On the GPU im2col stays (its
    CuPy kernels are the measured path there), and float16 stays on im2col (Winograd's transforms add
    rounding there). ``"winograd"`` forces it for every shape it can compute.
    """
    from minires.ops import winograd

    choice = _checked(conv_algorithm)
    if choice == "im2col" or not winograd.supports(kernel, stride, pads, dilation, groups):
        return "im2col"
    if choice == "winograd":
        return "winograd"
    if xp is not np or np.dtype(dtype) not in _WINOGRAD_DTYPES:
        return "im2col"
    oh, ow = output_size
    big_enough = (
        in_channels >= WINOGRAD_MIN_CHANNELS
        and min(oh, ow) >= WINOGRAD_MIN_SIDE
        and oh * ow * in_channels >= WINOGRAD_MIN_WORK
    )
    return "winograd" if big_enough else "im2col"


@contextlib.contextmanager
def use_conv_algorithm(name: str) -> Iterator[None]:
    """Set ``conv_algorithm`` inside a ``with`` block, restoring the old value after."""
    global conv_algorithm
    old, conv_algorithm = conv_algorithm, _checked(name)
    try:
        yield
    finally:
        conv_algorithm = old


def describe_conv_algorithm() -> str:
    """A line for logs and benchmarks: the setting and where it came from."""
    source = "MINIRES_CONV_ALGO" if os.environ.get("MINIRES_CONV_ALGO") == conv_algorithm else "default"
    if conv_algorithm != "auto" and source == "default":
        source = "set in code"
    return (
        f"{conv_algorithm} ({source}; 'auto' = Winograd F(2x2,3x3) for 3x3 stride-1 convs on the CPU with >= 8 channels "
        "and >= 8x8 outputs, im2col otherwise)"
    )


__all__ = ["CONV_ALGORITHMS", "choose_conv_algorithm", "conv_algorithm", "describe_conv_algorithm", "use_conv_algorithm"]
