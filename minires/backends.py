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


def choose_conv_algorithm(
    xp: Any,
    dtype: Any,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
) -> str:
    """``"winograd"`` or ``"im2col"`` for one convolution, by ``conv_algorithm`` and the layer's shape.

    The rule under "auto": Winograd for every shape it computes (3x3, stride 1, dilation 1, groups 1,
    padding at most 2) on the CPU (numpy) in float32/float64. Measured with ``benchmarks/train_step.py``
    and ``benchmarks/conv_layers.py``: it beats im2col on every such layer of ResNet-18/20, from 32x32
    down to 4x4 outputs. On the GPU im2col stays, because its CuPy kernels are the measured path there,
    and float16 stays on im2col because Winograd's transforms add rounding there.
    """
    from minires.ops import winograd

    choice = _checked(conv_algorithm)
    if choice == "im2col" or not winograd.supports(kernel, stride, pads, dilation, groups):
        return "im2col"
    if choice == "winograd":
        return "winograd"
    return "winograd" if xp is np and np.dtype(dtype) in _WINOGRAD_DTYPES else "im2col"


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
    return f"{conv_algorithm} ({source}; 'auto' = Winograd F(2x2,3x3) for 3x3 stride-1 convs on the CPU, im2col otherwise)"


__all__ = ["CONV_ALGORITHMS", "choose_conv_algorithm", "conv_algorithm", "describe_conv_algorithm", "use_conv_algorithm"]
