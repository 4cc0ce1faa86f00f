"""Index-driven ops along one dim: ``gather`` / ``scatter_add`` (PyTorch's rules), and ``one_hot``.

For ``gather(x, dim, index)``: ``out[i][j][k] = x[i][index[i][j][k]][k]`` when dim == 1; ``index`` has
x's number of dims and, in every other dim, a size no larger than x's. ``scatter_add`` is its
adjoint: ``out = x.clone(); out[i][index[i][j][k]][k] += src[i][j][k]``.
"""

from __future__ import annotations

from typing import Any

from minires import backend
from minires.autograd.function import Context, Function
from minires.backend import xp_of
from minires.ops._util import as_tensor, normalize_axes
from minires.ops.along_dim import ScatterAddAlongDimFunction, TakeAlongDimFunction, along_dim_index, scatter_add_along_dim
from minires.tensor import Tensor


def _leading(index_shape: tuple[int, ...], dim: int) -> tuple[slice, ...]:
    """Slices that cut a larger tensor down to ``index_shape`` in every dim but ``dim``."""
    return tuple(slice(None) if d == dim else slice(0, n) for d, n in enumerate(index_shape))


class Gather(Function):
    @staticmethod
    def forward(ctx: Context, x: Any, dim: int, index: Any) -> Any:
        ctx.meta = (x.shape, dim, index)
        return x[along_dim_index(index, dim)]

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None, None]:
        shape, dim, index = ctx.meta
        return scatter_add_along_dim(g, index, dim, shape), None, None  # repeated indices accumulate

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor) -> tuple[Any, None, None]:
        shape, dim, index = ctx.meta
        return ScatterAddAlongDimFunction.apply(g, index, dim, shape), None, None


class ScatterAdd(Function):
    @staticmethod
    def forward(ctx: Context, x: Any, dim: int, index: Any, src: Any) -> Any:
        out = x.copy()
        backend.add_at(out, along_dim_index(index, dim), src[_leading(index.shape, dim)])
        ctx.meta = (src.shape, dim, index)
        return out

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None, None, Any]:
        src_shape, dim, index = ctx.meta
        gsrc = None
        if ctx.needs_input_grad[3]:
            gsrc = xp_of(g).zeros(src_shape, dtype=g.dtype)
            gsrc[_leading(index.shape, dim)] = g[along_dim_index(index, dim)]
        return g, None, None, gsrc

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor) -> tuple[Any, None, None, Any]:
        src_shape, dim, index = ctx.meta
        gsrc = None
        if ctx.needs_input_grad[3]:
            if tuple(index.shape) != tuple(src_shape):
                raise RuntimeError(
                    f"scatter_add: create_graph=True needs index and src of one shape, got index {tuple(index.shape)} "
                    f"and src {tuple(src_shape)} (a smaller index is differentiable once only)"
                )
            gsrc = TakeAlongDimFunction.apply(g, index, dim)
        return g, None, None, gsrc


def _check_index(name: str, x: Tensor, dim: int, index: Tensor, others: tuple[tuple[str, Tensor], ...] = ()) -> int:
    if index.dtype.kind not in "iu":
        raise TypeError(f"{name}: index must be an integer tensor (int64), got dtype {index.dtype}")
    if index.ndim != x.ndim:
        raise ValueError(f"{name}: index has {index.ndim} dims, the input {x.ndim} (shape {x.shape}); they must match")
    d = normalize_axes(name, dim, x.ndim)
    d = d[0] if d else 0
    for label, t in (("input", x), *others):
        for k, (a, b) in enumerate(zip(index.shape, t.shape)):
            if (k != d or label != "input") and a > b:
                raise ValueError(
                    f"{name}: index shape {index.shape} is larger than the {label} shape {t.shape} in dim {k}"
                )
    if index.numel():
        lo, hi = int(index.data.min()), int(index.data.max())
        if lo < 0 or hi >= x.shape[d]:
            raise IndexError(f"{name}: index values must be in [0, {x.shape[d]}) for dim {dim} of shape {x.shape}, got [{lo}, {hi}]")
    return d


def gather(x: Tensor, dim: int, index: Any) -> Tensor:
    """Pick values along ``dim`` at ``index`` (same number of dims as x); differentiable in x."""
    x, index = as_tensor(x), as_tensor(index)
    d = _check_index("gather", x, dim, index)
    return Gather.apply(x, d, index.data)


def scatter_add(x: Tensor, dim: int, index: Any, src: Any) -> Tensor:
    """A copy of x with ``src`` added at ``index`` along ``dim`` (repeats accumulate); differentiable in x and src."""
    x, index = as_tensor(x), as_tensor(index)
    src = as_tensor(src, like=x)
    if src.dtype != x.dtype:
        raise TypeError(f"scatter_add: src dtype {src.dtype} differs from the input's {x.dtype}")
    d = _check_index("scatter_add", x, dim, index, (("src", src),))
    return ScatterAdd.apply(x, d, index.data, src)


def isfinite(x: Tensor) -> Tensor:
    """Bool tensor: True where x is neither inf nor nan."""
    x = as_tensor(x)
    return Tensor._from_array(xp_of(x.data).isfinite(x.data))


def isnan(x: Tensor) -> Tensor:
    """Bool tensor: True where x is nan."""
    x = as_tensor(x)
    return Tensor._from_array(xp_of(x.data).isnan(x.data))


def one_hot(target: Any, num_classes: int = -1) -> Tensor:
    """int64 tensor of shape ``target.shape + (num_classes,)`` with a 1 at each target's class, as
    ``torch.nn.functional.one_hot``; ``num_classes=-1`` means max(target) + 1."""
    target = as_tensor(target)
    if target.dtype.kind not in "iu":
        raise TypeError(f"one_hot: expected an integer tensor of class indices, got dtype {target.dtype}")
    xp = xp_of(target.data)
    if target.numel() and int(target.data.min()) < 0:
        raise ValueError(f"one_hot: class values must be non-negative, got {int(target.data.min())}")
    top = int(target.data.max()) + 1 if target.numel() else 0
    if num_classes == -1:
        if not target.numel():
            raise ValueError("one_hot: cannot infer num_classes from an empty tensor; pass num_classes")
        num_classes = top
    elif num_classes < top:
        raise ValueError(f"one_hot: class value {top - 1} is too large for num_classes={num_classes}")
    return Tensor._from_array((target.data[..., None] == xp.arange(num_classes)).astype("int64"))
