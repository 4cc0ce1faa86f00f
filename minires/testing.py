"""Hypothesis strategies for property-based gradient tests — of minires' ops and of your own.

Everything here draws *valid* inputs by construction, so a failing example is a real bug, not a
rejected input. A complete property test::

    from hypothesis import given
    import minires as mr
    from minires.testing import arrays_away_from, shapes

    @given(arrays_away_from(shapes(max_dims=3), kinks=(0.0,)))
    def test_relu_gradient(x):
        t = mr.tensor(x, requires_grad=True)          # float64 data
        assert mr.gradcheck(mr.relu, [t])

Requires the ``hypothesis`` package (the ``test`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from minires.ops.geometry import output_length

try:
    from hypothesis import assume
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("minires.testing needs hypothesis: pip install 'minires[test]'") from exc


def shapes(min_dims: int = 0, max_dims: int = 4, min_side: int = 1, max_side: int = 5) -> st.SearchStrategy[tuple[int, ...]]:
    """Array shapes, e.g. ``(3, 1, 4)``."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcastable_shapes(
    num_shapes: int = 2, min_dims: int = 0, max_dims: int = 4, max_side: int = 5
) -> st.SearchStrategy[tuple[tuple[int, ...], ...]]:
    """A tuple of ``num_shapes`` shapes that broadcast together (dims of 1 and missing leading dims)."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims, max_side=max_side
    ).map(lambda bs: bs.input_shapes)


def float_arrays(
    shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]],
    low: float = -3.0,
    high: float = 3.0,
    dtype: Any = np.float64,
) -> st.SearchStrategy[np.ndarray]:
    """Arrays of finite floats in [low, high] (float64 by default, for gradchecks)."""
    elements = st.floats(low, high, allow_nan=False, allow_infinity=False, width=np.dtype(dtype).itemsize * 8)
    return hnp.arrays(np.dtype(dtype), shape, elements=elements)


def arrays_away_from(
    shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]],
    kinks: Sequence[float] = (0.0,),
    margin: float = 1e-2,
    low: float = -3.0,
    high: float = 3.0,
    dtype: Any = np.float64,
) -> st.SearchStrategy[np.ndarray]:
    """Float arrays whose every element is at least ``margin`` from each kink (e.g. 0 for relu/abs).

    Finite differences straddling a kink measure neither side's slope; keep them apart on purpose
    and test the kink's convention separately.
    """
    def away(v: float) -> bool:
        return all(abs(v - k) >= margin for k in kinks)

    elements = st.floats(low, high, allow_nan=False, allow_infinity=False).filter(away)
    return hnp.arrays(np.dtype(dtype), shape, elements=elements)


@st.composite
def arrays_without_ties(
    draw: st.DrawFn,
    shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]],
    gap: float = 1e-2,
    low: float = -3.0,
    high: float = 3.0,
    dtype: Any = np.float64,
) -> np.ndarray:
    """Float arrays whose values all differ pairwise by at least ``gap`` (no max/min ties).

    Max and max-pool are not differentiable where two candidates tie; a finite difference of size
    eps << gap never reorders them.
    """
    if isinstance(shape, st.SearchStrategy):
        shape = draw(shape)
    n = int(np.prod(shape))
    span = high - low
    if n and (n - 1) * gap > span:
        high = low + (n - 1) * gap * 1.5  # widen the range so n distinct values fit
        span = high - low
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    slots = max(int(span / gap), n)
    picks = rng.choice(slots, size=n, replace=False)
    values = low + picks * gap + draw(st.floats(0, gap / 4))
    return values.reshape(shape).astype(dtype)


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool = False) -> int:
    """Output length along one spatial dim (PyTorch's rule; ``ceil_mode`` as pooling's), from
    :func:`minires.ops.geometry.output_length` with the same padding on both sides."""
    return output_length(size, kernel, stride, padding, padding, dilation, ceil_mode)


def _window_dim(
    draw: st.DrawFn, max_kernel: int, max_dilation: int, max_padding: int | None, max_stride: int, max_size: int
) -> tuple[int, int, int, int, int]:
    """(kernel, dilation, padding, stride, input size) along one spatial dim, the input at least as large
    as the dilated kernel once padded. ``max_padding=None``: at most kernel // 2 (PyTorch's pooling rule)."""
    k = draw(st.integers(1, max_kernel))
    d = draw(st.integers(1, max_dilation))
    p = draw(st.integers(0, k // 2 if max_padding is None else max_padding))
    s = draw(st.integers(1, max_stride))
    reach = d * (k - 1) + 1
    size = draw(st.integers(max(1, reach - 2 * p), max(max_size, reach - 2 * p)))
    return k, d, p, s, size


@dataclass(frozen=True)
class ConvConfig:
    """A conv2d call valid by construction: input (N, C, H, W), weight (O, C/groups, kH, kW)."""

    batch: int
    in_channels: int
    out_channels: int
    groups: int
    height: int
    width: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels, self.height, self.width)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        oh = conv_output_size(self.height, self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0])
        ow = conv_output_size(self.width, self.kernel_size[1], self.stride[1], self.padding[1], self.dilation[1])
        return (self.batch, self.out_channels, oh, ow)


@st.composite
def conv_configs(
    draw: st.DrawFn,
    max_batch: int = 2,
    max_channels: int = 4,
    max_groups: int = 2,
    max_size: int = 7,
    max_kernel: int = 3,
    max_stride: int = 3,
    max_padding: int = 2,
    max_dilation: int = 2,
) -> ConvConfig:
    """Conv2d configurations (shapes, kernel, stride, padding, dilation, groups) valid by construction."""
    groups = draw(st.integers(1, max_groups))
    cin = groups * draw(st.integers(1, max(1, max_channels // groups)))
    cout = groups * draw(st.integers(1, max(1, max_channels // groups)))
    (kh, dh, ph, sh, h), (kw, dw, pw, sw, w) = (
        _window_dim(draw, max_kernel, max_dilation, max_padding, max_stride, max_size) for _ in range(2)
    )
    return ConvConfig(
        batch=draw(st.integers(1, max_batch)),
        in_channels=cin,
        out_channels=cout,
        groups=groups,
        height=h,
        width=w,
        kernel_size=(kh, kw),
        stride=(sh, sw),
        padding=(ph, pw),
        dilation=(dh, dw),
    )


@dataclass(frozen=True)
class PoolConfig:
    """A pooling call valid by construction: input (N, C, H, W) and the window parameters."""

    batch: int
    channels: int
    height: int
    width: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        out = [
            conv_output_size(n, k, s, p, d, self.ceil_mode)
            for n, k, s, p, d in zip((self.height, self.width), self.kernel_size, self.stride, self.padding, self.dilation)
        ]
        return (self.batch, self.channels, out[0], out[1])


@st.composite
def pool_configs(
    draw: st.DrawFn,
    max_batch: int = 2,
    max_channels: int = 3,
    max_size: int = 7,
    max_kernel: int = 3,
    max_stride: int = 3,
    max_dilation: int = 2,
    allow_dilation: bool = True,
) -> PoolConfig:
    """Pooling configurations valid by construction (PyTorch's rule: padding <= kernel // 2)."""
    dims = [_window_dim(draw, max_kernel, max_dilation if allow_dilation else 1, None, max_stride, max_size) for _ in range(2)]
    ceil_mode = draw(st.booleans())
    cfg = PoolConfig(
        batch=draw(st.integers(1, max_batch)),
        channels=draw(st.integers(1, max_channels)),
        height=dims[0][4],
        width=dims[1][4],
        kernel_size=(dims[0][0], dims[1][0]),
        stride=(dims[0][3], dims[1][3]),
        padding=(dims[0][2], dims[1][2]),
        dilation=(dims[0][1], dims[1][1]),
        ceil_mode=ceil_mode,
    )
    assume(min(cfg.output_shape[2:]) >= 1)
    # every window must see at least one input element (with dilation a window can fall entirely in the
    # padding, where PyTorch's max_pool2d returns -inf and an out-of-range index: not a meaningful case)
    for d, n in enumerate((cfg.height, cfg.width)):
        k, s, p, dil = cfg.kernel_size[d], cfg.stride[d], cfg.padding[d], cfg.dilation[d]
        assume(all(any(0 <= o * s - p + i * dil < n for i in range(k)) for o in range(cfg.output_shape[2 + d])))
    return cfg


from minires.check_grads import check_grads  # noqa: E402 - JAX's check_grads, part of the testing toolkit

__all__ = [
    "check_grads",
    "ConvConfig",
    "PoolConfig",
    "arrays_away_from",
    "arrays_without_ties",
    "broadcastable_shapes",
    "conv_configs",
    "conv_output_size",
    "float_arrays",
    "pool_configs",
    "shapes",
]
