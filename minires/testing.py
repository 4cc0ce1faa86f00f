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

What there is: shapes (:func:`shapes`, :func:`broadcastable_shapes` with ``.result_shape``), arrays
(:func:`float_arrays`, :func:`arrays_away_from` kinks, :func:`arrays_without_ties`; ``dtype`` may be a
strategy), Tensors (:func:`tensors`), arguments (:func:`valid_dims`, :func:`basic_indices`,
:func:`integer_array_indices`, :func:`class_targets`) and whole conv/pool calls (:func:`conv_configs`,
:func:`pool_configs`, whose ``.kwargs`` go straight into ``F.conv2d`` / ``F.max_pool2d``).

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


def _dtype(draw: st.DrawFn, dtype: Any) -> np.dtype:
    """``dtype`` as a numpy dtype; a strategy (e.g. ``st.sampled_from([np.float32, np.float64])``) is drawn from."""
    return np.dtype(draw(dtype) if isinstance(dtype, st.SearchStrategy) else dtype)


def _shape(draw: st.DrawFn, shape: Any) -> tuple[int, ...]:
    return tuple(draw(shape) if isinstance(shape, st.SearchStrategy) else shape)


def _floats(low: float, high: float, dtype: np.dtype) -> st.SearchStrategy[float]:
    """Finite floats in [low, high], exactly representable in ``dtype``."""
    return st.floats(low, high, allow_nan=False, allow_infinity=False, width=dtype.itemsize * 8)


def shapes(min_dims: int = 0, max_dims: int = 4, min_side: int = 1, max_side: int = 5) -> st.SearchStrategy[tuple[int, ...]]:
    """Array shapes, e.g. ``(3, 1, 4)``."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


class BroadcastShapes(tuple):
    """The input shapes (unpack it as a tuple: ``sa, sb = shapes``) plus ``result_shape``, the shape they
    broadcast to."""

    result_shape: tuple[int, ...]

    def __new__(cls, input_shapes: Sequence[tuple[int, ...]], result_shape: tuple[int, ...]) -> BroadcastShapes:
        out = super().__new__(cls, input_shapes)
        out.result_shape = tuple(result_shape)
        return out


def broadcastable_shapes(
    num_shapes: int = 2, min_dims: int = 0, max_dims: int = 4, max_side: int = 5
) -> st.SearchStrategy[BroadcastShapes]:
    """``num_shapes`` shapes that broadcast together (dims of 1 and missing leading dims), as a tuple
    that also carries ``.result_shape``: ``shapes = draw(broadcastable_shapes()); a, b = shapes``."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims, max_side=max_side
    ).map(lambda bs: BroadcastShapes(bs.input_shapes, bs.result_shape))


@st.composite
def float_arrays(
    draw: st.DrawFn,
    shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]],
    low: float = -3.0,
    high: float = 3.0,
    dtype: Any = np.float64,
) -> np.ndarray:
    """Arrays of finite floats in [low, high] (float64 by default, for gradchecks; ``dtype`` may be a strategy)."""
    dt = _dtype(draw, dtype)
    return draw(hnp.arrays(dt, _shape(draw, shape), elements=_floats(low, high, dt)))


@st.composite
def arrays_away_from(
    draw: st.DrawFn,
    shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]],
    kinks: Sequence[float] = (0.0,),
    margin: float = 1e-2,
    low: float = -3.0,
    high: float = 3.0,
    dtype: Any = np.float64,
) -> np.ndarray:
    """Float arrays whose every element is at least ``margin`` from each kink (e.g. 0 for relu/abs).

    Finite differences straddling a kink measure neither side's slope; keep them apart on purpose
    and test the kink's convention separately.
    """
    def away(v: float) -> bool:
        return all(abs(v - k) >= margin for k in kinks)

    dt = _dtype(draw, dtype)
    return draw(hnp.arrays(dt, _shape(draw, shape), elements=_floats(low, high, dt).filter(away)))


@st.composite
def arrays_without_ties(
    draw: st.DrawFn,
    shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]],
    gap: float = 1e-2,
    low: float = -3.0,
    high: float = 3.0,
    dtype: Any = np.float64,
) -> np.ndarray:
    """Float arrays in [low, high] whose values all differ pairwise by at least ``gap`` (no max/min ties).

    Max and max-pool are not differentiable where two candidates tie; a finite difference of size
    eps << gap never reorders them. Raises ValueError when the values cannot fit in the range.
    """
    shape = _shape(draw, shape)
    dt = _dtype(draw, dtype)
    n = int(np.prod(shape))
    jitter = gap / 4
    slots = int(np.floor((high - low - jitter) / gap + 1e-9)) + 1 if high - low >= jitter else 0
    if n > slots:
        raise ValueError(
            f"arrays_without_ties: {n} values at least {gap} apart do not fit in [{low}, {high}] "
            f"(room for {slots}); widen the range, lower gap or draw smaller shapes"
        )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    picks = rng.choice(slots, size=n, replace=False)
    values = low + picks * gap + draw(st.floats(0, jitter))
    return np.minimum(values, high).reshape(shape).astype(dt)


@st.composite
def tensors(
    draw: st.DrawFn,
    dtype: Any = np.float64,
    shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]] | None = None,
    requires_grad: bool | st.SearchStrategy[bool] = False,
    elements: st.SearchStrategy[Any] | None = None,
    device: str = "cpu",
) -> Any:
    """minires Tensors (float64 by default, any shape from :func:`shapes`), a new leaf each draw.

    ``elements`` draws the values (default: finite floats in [-3, 3] for float dtypes, ints in
    [-5, 5] for integer ones, booleans for bool); ``dtype`` and ``requires_grad`` may be strategies.
    """
    import minires as mr

    dt = _dtype(draw, dtype)
    shape = _shape(draw, shapes() if shape is None else shape)
    if elements is None:
        if dt.kind == "f":
            elements = _floats(-3.0, 3.0, dt)
        elif dt.kind == "b":
            elements = st.booleans()
        else:
            elements = st.integers(0 if dt.kind == "u" else -5, 5)
    array = draw(hnp.arrays(dt, shape, elements=elements))
    grad = draw(requires_grad) if isinstance(requires_grad, st.SearchStrategy) else requires_grad
    return mr.tensor(array, device=device, requires_grad=bool(grad))


@st.composite
def valid_dims(
    draw: st.DrawFn, ndim: int | tuple[int, ...], allow_none: bool = True, allow_tuple: bool = True, min_dims: int = 1
) -> int | tuple[int, ...] | None:
    """A ``dim`` argument valid for a tensor with ``ndim`` dims (or of that shape): None (all dims, when
    allowed), an int in [-ndim, ndim) (negatives included), or a tuple of distinct dims."""
    ndim = len(ndim) if isinstance(ndim, tuple) else int(ndim)
    options = []
    if allow_none:
        options.append(st.none())
    if ndim:
        options.append(st.integers(-ndim, ndim - 1))
        if allow_tuple:
            options.append(
                st.lists(st.integers(0, ndim - 1), min_size=min(min_dims, ndim), max_size=ndim, unique=True).flatmap(
                    lambda dims: st.tuples(*(st.sampled_from([d, d - ndim]) for d in dims))
                )
            )
    if not options:
        raise ValueError("valid_dims: a 0-d tensor has no dims to draw; allow_none=True draws None")
    return draw(st.one_of(options))


def basic_indices(shape: tuple[int, ...], allow_newaxis: bool = False, allow_ellipsis: bool = True) -> st.SearchStrategy[Any]:
    """Basic indices (ints, slices, Ellipsis, None when allowed) valid for ``shape``: ``x[index]`` is a view."""
    return hnp.basic_indices(shape, allow_newaxis=allow_newaxis, allow_ellipsis=allow_ellipsis)


def integer_array_indices(
    shape: tuple[int, ...], result_shape: st.SearchStrategy[tuple[int, ...]] | None = None
) -> st.SearchStrategy[Any]:
    """Integer-array ("advanced") indices for ``shape``: a tuple of int64 arrays, one per leading dim,
    all in range (negatives included), repeats allowed (the gradient must accumulate them)."""
    if result_shape is None:
        result_shape = shapes(min_dims=1, max_dims=2, max_side=4)
    return hnp.integer_array_indices(shape, result_shape=result_shape)


@st.composite
def class_targets(
    draw: st.DrawFn, batch: int | tuple[int, ...] | st.SearchStrategy[Any], num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """int64 class indices in [0, num_classes) of shape ``batch`` (an int N, a shape, or a strategy), as
    cross_entropy / nll_loss take; with ``ignore_index``, some entries may be that value."""
    shape = draw(batch) if isinstance(batch, st.SearchStrategy) else batch
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    values = st.integers(0, num_classes - 1)
    if ignore_index is not None:
        values = st.one_of(values, st.just(ignore_index))
    return draw(hnp.arrays(np.int64, shape, elements=values))


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
    padding: tuple[int, int] | str  # or "same" (stride 1; the output keeps the input's size)
    dilation: tuple[int, int]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels, self.height, self.width)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        if self.padding == "same":
            return (self.batch, self.out_channels, self.height, self.width)
        oh = conv_output_size(self.height, self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0])
        ow = conv_output_size(self.width, self.kernel_size[1], self.stride[1], self.padding[1], self.dilation[1])
        return (self.batch, self.out_channels, oh, ow)

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the call: ``F.conv2d(x, w, **cfg.kwargs)`` (also ``torch.nn.functional.conv2d``)."""
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation, "groups": self.groups}

    @property
    def module_kwargs(self) -> dict[str, Any]:
        """The arguments of the layer: ``nn.Conv2d(**cfg.module_kwargs)``."""
        return {"in_channels": self.in_channels, "out_channels": self.out_channels, "kernel_size": self.kernel_size,
                **self.kwargs}


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
    same_padding: bool | None = False,
) -> ConvConfig:
    """Conv2d configurations (shapes, kernel, stride, padding, dilation, groups) valid by construction.

    ``same_padding``: False never, True always, None sometimes draws ``padding="same"`` (with stride 1).
    """
    same = draw(st.booleans()) if same_padding is None else same_padding
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
        stride=(1, 1) if same else (sh, sw),
        padding="same" if same else (ph, pw),
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

    @property
    def kwargs(self) -> dict[str, Any]:
        """``F.max_pool2d(x, **cfg.kwargs)`` (avg_pool2d takes no dilation: use ``avg_kwargs``)."""
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "dilation": self.dilation, "ceil_mode": self.ceil_mode}

    @property
    def avg_kwargs(self) -> dict[str, Any]:
        """``F.avg_pool2d(x, **cfg.avg_kwargs)`` (draw with ``allow_dilation=False``)."""
        if self.dilation != (1, 1):
            raise ValueError("PoolConfig.avg_kwargs: avg_pool2d has no dilation; draw with pool_configs(allow_dilation=False)")
        return {k: v for k, v in self.kwargs.items() if k != "dilation"}


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
    "BroadcastShapes",
    "check_grads",
    "ConvConfig",
    "PoolConfig",
    "arrays_away_from",
    "arrays_without_ties",
    "basic_indices",
    "broadcastable_shapes",
    "class_targets",
    "conv_configs",
    "conv_output_size",
    "float_arrays",
    "integer_array_indices",
    "pool_configs",
    "shapes",
    "tensors",
    "valid_dims",
]
