"""Shape ops: reshape/view, transpose/permute, flatten, squeeze/unsqueeze, expand, indexing,
cat, stack, pad, and device/dtype moves. Their backward only moves gradient values around, so under
``create_graph=True`` it is the matching shape op on Tensors (getitem's is a scatter, whose own
backward is getitem again)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from minires import backend
from minires.autograd.function import Context, Function
from minires.backend import xp_of
from minires.ops._util import as_tensor, normalize_axes, sum_to_shape
from minires.tensor import Tensor


def _shape_arg(shape: Sequence[Any]) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple(int(s) for s in shape)


class Reshape(Function):
    differentiable_backward = True
    returns_view = True

    @staticmethod
    def forward(ctx: Context, x: Any, shape: tuple[int, ...]) -> Any:
        ctx.in_shape = x.shape
        return x.reshape(shape)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None]:
        return g.reshape(ctx.in_shape), None


class Permute(Function):
    returns_view = True

    @staticmethod
    def forward(ctx: Context, x: Any, dims: tuple[int, ...]) -> Any:
        ctx.dims = dims
        return x.transpose(dims)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None]:
        return g.transpose(tuple(np.argsort(ctx.dims))), None

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor) -> tuple[Any, None]:
        return Permute.apply(g, tuple(int(d) for d in np.argsort(ctx.dims))), None


class Expand(Function):
    differentiable_backward = True
    returns_view = True

    @staticmethod
    def forward(ctx: Context, x: Any, shape: tuple[int, ...]) -> Any:
        ctx.in_shape = x.shape
        return xp_of(x).broadcast_to(x, shape)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None]:
        return sum_to_shape(g, ctx.in_shape), None


class GetItem(Function):
    """``x[index]``; the backward scatters into zeros, accumulating repeated advanced indices."""

    returns_view = True  # for basic indices (apply checks that memory is really shared)

    @staticmethod
    def forward(ctx: Context, x: Any, index: Any) -> Any:
        ctx.meta = (x.shape, x.dtype, index)
        if _is_basic_index(index):
            parts = index if isinstance(index, tuple) else (index,)
            if Ellipsis not in parts:  # x[0] of a 1-d array: a 0-d view (as PyTorch's), not a numpy scalar copy
                return x[(*parts, Ellipsis)]
        return x[index]

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None]:
        shape, _, index = ctx.meta
        return _scatter_index(g, index, shape), None

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor) -> tuple[Any, None]:
        shape, _, index = ctx.meta
        return IndexScatterFunction.apply(g, index, shape), None


def _scatter_index(values: Any, index: Any, shape: tuple[int, ...]) -> Any:
    """Zeros of ``shape`` with ``values`` added at ``index`` (repeated advanced indices accumulate)."""
    out = xp_of(values).zeros(shape, dtype=values.dtype)
    if _is_basic_index(index):
        out[index] = values  # basic indexing never repeats an element
    else:
        backend.add_at(out, index, values)
    return out


class IndexScatterFunction(Function):
    """getitem's backward as an op: ``values`` added into zeros of ``shape`` at ``index``; its own
    backward is ``getitem`` again (so indexing is differentiable to any order)."""

    @staticmethod
    def forward(ctx: Context, values: Any, index: Any, shape: tuple[int, ...]) -> Any:
        ctx.index = index
        return _scatter_index(values, index, shape)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None, None]:
        return g[ctx.index], None, None

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor) -> tuple[Any, None, None]:
        return GetItem.apply(g, ctx.index), None, None


class IndexPut(Function):
    """``x[index] = value`` out of place: a copy of ``x`` with ``value`` (broadcast) written at ``index``.

    The gradient for ``x`` is zero where it was overwritten; ``value`` gets the gradient of the places
    it went to (summed over broadcasting). With repeated advanced indices the last write wins in the
    forward, and every repeat gets the gradient (PyTorch leaves this case undefined)."""

    @staticmethod
    def forward(ctx: Context, x: Any, value: Any, index: Any) -> Any:
        out = x.copy()
        out[index] = value
        ctx.meta = (index, value.shape)
        return out

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any, None]:
        index, value_shape = ctx.meta
        gx = None
        if ctx.needs_input_grad[0]:
            gx = g.copy()
            gx[index] = 0
        gv = None
        if ctx.needs_input_grad[1]:
            gv = sum_to_shape(g[index], value_shape)
        return gx, gv, None

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor) -> tuple[Any, Any, None]:
        index, value_shape = ctx.meta
        gx = gv = None
        if ctx.needs_input_grad[0]:  # g with zeros written where x was overwritten
            zeros = Tensor._from_array(xp_of(g.data).zeros(value_shape, dtype=g.dtype))
            gx = IndexPut.apply(g, zeros, index)
        if ctx.needs_input_grad[1]:
            gv = sum_to_shape(GetItem.apply(g, index), value_shape)
        return gx, gv, None


class Clone(Function):
    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        return x.copy()

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        return g


class Flip(Function):
    @staticmethod
    def forward(ctx: Context, x: Any, axes: tuple[int, ...]) -> Any:
        ctx.axes = axes
        return xp_of(x).flip(x, axis=axes).copy()

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None]:
        return xp_of(g).flip(g, axis=ctx.axes), None

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor) -> tuple[Any, None]:
        return Flip.apply(g, ctx.axes), None


class Cat(Function):
    @staticmethod
    def forward(ctx: Context, dim: int, *xs: Any) -> Any:
        ctx.meta = (dim, [x.shape[dim] for x in xs])
        return xp_of(*xs).concatenate(xs, axis=dim)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, ...]:
        dim, sizes = ctx.meta
        splits = np.cumsum(sizes)[:-1].tolist()
        return (None, *xp_of(g).split(g, splits, axis=dim))

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor) -> tuple[Any, ...]:
        dim, sizes = ctx.meta
        starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        lead = (slice(None),) * dim
        return (None, *(g[lead + (slice(lo, hi),)] for lo, hi in zip(starts[:-1], starts[1:])))


class Stack(Function):
    @staticmethod
    def forward(ctx: Context, dim: int, *xs: Any) -> Any:
        ctx.dim = dim
        return xp_of(*xs).stack(xs, axis=dim)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, ...]:
        xp = xp_of(g)
        return (None, *(xp.take(g, i, axis=ctx.dim) for i in range(g.shape[ctx.dim])))

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor) -> tuple[Any, ...]:
        lead = (slice(None),) * ctx.dim
        return (None, *(g[lead + (i,)] for i in range(g.shape[ctx.dim])))


class Pad(Function):
    """Constant padding; ``widths`` is numpy's per-axis ((before, after), ...)."""

    differentiable_backward = True  # backward is a slice

    @staticmethod
    def forward(ctx: Context, x: Any, widths: tuple[tuple[int, int], ...], value: float) -> Any:
        ctx.slices = tuple(slice(lo, lo + n) for (lo, _), n in zip(widths, x.shape))
        return xp_of(x).pad(x, widths, mode="constant", constant_values=value)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None, None]:
        return g[ctx.slices], None, None


class ToDeviceDtype(Function):
    @staticmethod
    def forward(ctx: Context, x: Any, device: str, dtype: Any) -> Any:
        ctx.meta = (backend.device_of(x), x.dtype)
        return backend.to_device(x, device).astype(dtype, copy=False)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None, None]:
        device, dtype = ctx.meta
        return backend.to_device(g, device).astype(dtype, copy=False), None, None

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor) -> tuple[Any, None, None]:
        device, dtype = ctx.meta
        return to_device_dtype(g, device, dtype), None, None


def _is_basic_index(index: Any) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, np.integer, slice)) for p in parts)


def raw_index(index: Any) -> Any:
    """An index with its Tensors unwrapped to arrays. A list holding Tensors indexes one dim per
    Tensor, like a tuple (PyTorch's rule; numpy would stack it into one index array)."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(raw_index(i) for i in index)
    if isinstance(index, list):
        return np.asarray(index) if not any(isinstance(i, Tensor) for i in index) else tuple(raw_index(i) for i in index)
    return index


def index_put(x: Tensor, index: Any, value: Any) -> Tensor:
    """A copy of ``x`` with ``x[index] = value`` (differentiable in both); what ``x[index] = value`` records."""
    x = as_tensor(x)
    value = as_tensor(value, like=x)
    if value.dtype != x.dtype:
        value = value.to(dtype=x.dtype)
    try:
        return IndexPut.apply(x, value, raw_index(index))
    except (IndexError, ValueError) as exc:
        raise type(exc)(
            f"setitem: cannot write a value of shape {value.shape} at index {index!r} of a tensor of shape {x.shape}: {exc}"
        ) from None


def clone(x: Tensor) -> Tensor:
    """A copy with its own memory; the gradient passes through unchanged."""
    return Clone.apply(as_tensor(x))


def flip(x: Tensor, dims: Any) -> Tensor:
    """Reverse the order of elements along ``dims`` (an int or a sequence), as ``torch.flip``."""
    x = as_tensor(x)
    axes = normalize_axes("flip", dims, x.ndim)
    return Flip.apply(x, axes if axes else ())


def reshape(x: Tensor, *shape: Any) -> Tensor:
    x = as_tensor(x)
    target = _shape_arg(shape)
    try:
        out_shape = np.empty(x.shape, dtype=np.bool_).reshape(target).shape if x.numel() else target
    except ValueError:
        raise ValueError(f"reshape: cannot reshape a tensor of shape {x.shape} ({x.numel()} elements) into {target}") from None
    return Reshape.apply(x, tuple(out_shape))


view = reshape


def permute(x: Tensor, *dims: Any) -> Tensor:
    x = as_tensor(x)
    order = _shape_arg(dims)
    out_of_range = [d for d in order if not -max(x.ndim, 1) <= d < max(x.ndim, 1)]
    if out_of_range or sorted(d % max(x.ndim, 1) for d in order) != list(range(x.ndim)):
        raise ValueError(f"permute: dims {order} are not a permutation of the {x.ndim} dims of shape {x.shape}")
    return Permute.apply(x, tuple(d % max(x.ndim, 1) for d in order))


def transpose(x: Tensor, dim0: int = -2, dim1: int = -1) -> Tensor:
    x = as_tensor(x)
    axes = [normalize_axes("transpose", d, x.ndim) for d in (dim0, dim1)]  # raises on a dim out of range
    if x.ndim < 2:
        return x
    d0, d1 = (a[0] for a in axes)
    order = list(range(x.ndim))
    order[d0], order[d1] = order[d1], order[d0]
    return Permute.apply(x, tuple(order))


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    x = as_tensor(x)
    if x.ndim == 0:
        return reshape(x, 1)
    s = normalize_axes("flatten", start_dim, x.ndim)[0]
    e = normalize_axes("flatten", end_dim, x.ndim)[0]
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for shape {x.shape}")
    n = int(np.prod(x.shape[s : e + 1]))
    return reshape(x, *x.shape[:s], n, *x.shape[e + 1 :])


def squeeze(x: Tensor, dim: Any = None) -> Tensor:
    x = as_tensor(x)
    axes = normalize_axes("squeeze", dim, x.ndim)
    if axes is None:
        axes = tuple(i for i, n in enumerate(x.shape) if n == 1)
    return reshape(x, *[n for i, n in enumerate(x.shape) if not (i in axes and n == 1)])


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    x = as_tensor(x)
    if not -x.ndim - 1 <= dim <= x.ndim:
        raise IndexError(f"unsqueeze: dim {dim} is out of range for a tensor with {x.ndim} dimensions")
    dim = dim % (x.ndim + 1)
    return reshape(x, *x.shape[:dim], 1, *x.shape[dim:])


def expand(x: Tensor, *shape: Any) -> Tensor:
    x = as_tensor(x)
    target = list(_shape_arg(shape))
    offset = len(target) - x.ndim
    if offset < 0:
        raise ValueError(f"expand: target {tuple(target)} has fewer dims than the tensor's shape {x.shape}")
    bad = [j for j, n in enumerate(target) if n < 0 and (j < offset or n != -1)]
    if bad:
        raise ValueError(
            f"expand: target {tuple(target)} for shape {x.shape} has {target[bad[0]]} at dim {bad[0]}; expected "
            f"sizes >= 0, or -1 (keep the size) only in the last {x.ndim} dims, which the tensor already has"
        )
    for i, n in enumerate(x.shape):
        if target[offset + i] == -1:
            target[offset + i] = n
        elif n != 1 and n != target[offset + i]:
            raise ValueError(f"expand: cannot expand shape {x.shape} to {tuple(target)} (dim {i} is {n})")
    return Expand.apply(x, tuple(target))


def getitem(x: Tensor, index: Any) -> Tensor:
    raw = raw_index(index)
    try:
        return GetItem.apply(x, raw)
    except IndexError as exc:
        raise IndexError(f"getitem: index {index!r} is invalid for shape {x.shape}: {exc}") from None


def _check_joinable(name: str, xs: Sequence[Tensor]) -> list[Tensor]:
    if len(xs) == 0:
        raise ValueError(f"{name}: expected a non-empty sequence of tensors")
    return [as_tensor(t) for t in xs]


def cat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Join tensors along an existing dim (all other dims must match)."""
    xs = _check_joinable("cat", tensors)
    if any(t.ndim == 0 for t in xs):
        raise ValueError(f"cat: zero-dimensional tensors cannot be joined along a dim, got shapes {[t.shape for t in xs]}; use stack")
    d = normalize_axes("cat", dim, xs[0].ndim)[0]
    for t in xs[1:]:
        if t.ndim != xs[0].ndim or any(a != b for i, (a, b) in enumerate(zip(t.shape, xs[0].shape)) if i != d):
            raise ValueError(f"cat: shapes {[t.shape for t in xs]} differ outside dim {dim}")
    return Cat.apply(d, *xs)


def stack(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Join same-shaped tensors along a new dim."""
    xs = _check_joinable("stack", tensors)
    if any(t.shape != xs[0].shape for t in xs):
        raise ValueError(f"stack: expected tensors of one shape, got {[t.shape for t in xs]}")
    if not -xs[0].ndim - 1 <= dim <= xs[0].ndim:
        raise IndexError(f"stack: dim {dim} is out of range for {xs[0].ndim + 1} dimensions")
    return Stack.apply(dim % (xs[0].ndim + 1), *xs)


def pad(x: Tensor, pad: Sequence[int], mode: str = "constant", value: float = 0.0) -> Tensor:
    """Pad with a constant, PyTorch's convention: ``pad = (left, right, top, bottom, ...)``
    names the last dim first."""
    x = as_tensor(x)
    if mode != "constant":
        raise NotImplementedError(f"pad: mode {mode!r} is not supported; only 'constant'")
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(f"pad: expected an even number of values covering at most {x.ndim} dims, got {tuple(pad)}")
    if any(int(p) < 0 for p in pad):
        raise ValueError(f"pad: negative padding {tuple(pad)} is not supported")
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    return Pad.apply(x, tuple(widths), value)


def to_device_dtype(x: Tensor, device: Any = None, dtype: Any = None) -> Tensor:
    """``x`` on ``device`` with ``dtype`` (either may be None: keep it); x itself if nothing changes."""
    target_device = x.device if device is None else backend.parse_device(device)
    target_dtype = x.dtype if dtype is None else np.dtype(dtype)
    if target_device == x.device and target_dtype == x.dtype:
        return x
    if x.requires_grad and target_dtype.kind not in "fc":
        return Tensor._from_array(backend.to_device(x.data, target_device).astype(target_dtype))
    return ToDeviceDtype.apply(x, target_device, target_dtype)
