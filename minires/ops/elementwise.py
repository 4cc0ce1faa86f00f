"""Elementwise ops with broadcasting: arithmetic, math functions, clamp, where and comparisons.

Each Function keeps forward and backward side by side on raw arrays; binary ops sum their
gradients back to each input's shape (:func:`sum_to_shape`), which undoes broadcasting.
Most backwards use only operators Tensors also have (``differentiable_backward = True``), so the
same code computes differentiable gradients under ``create_graph=True``; the others (pow, where)
give a ``backward_graph`` written with Tensor ops.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minires.autograd.function import Context, Function
from minires.backend import xp_of
from minires.ops._util import array_of, as_tensor, quiet, sum_to_shape
from minires.tensor import DEFAULT_FLOAT, Tensor


def _binary(a: Any, b: Any) -> tuple[Tensor, Tensor]:
    """Both operands as Tensors, with PyTorch's promotion across kinds: when one is floating and
    the other integer or bool, the integer one takes the float dtype (numpy would widen
    float32 with int64 to float64). Integer tensors never require grad, so the cast is no graph op."""
    if isinstance(a, Tensor):
        b = as_tensor(b, like=a)
    else:
        b = as_tensor(b)
        a = as_tensor(a, like=b)
    a_float, b_float = a.dtype.kind in "fc", b.dtype.kind in "fc"
    if a_float and not b_float:
        b = Tensor._from_array(b.data.astype(a.dtype))
    elif b_float and not a_float:
        a = Tensor._from_array(a.data.astype(b.dtype))
    elif a.dtype != b.dtype and (a.ndim == 0) != (b.ndim == 0) and _category(a) == _category(b):
        # PyTorch: within one category, a 0-d tensor does not widen a tensor with dimensions
        # (float32 tensor + 0-d float64 tensor -> float32)
        if a.ndim == 0:
            a = a.to(dtype=b.dtype)
        else:
            b = b.to(dtype=a.dtype)
    return a, b


def _category(t: Tensor) -> int:
    """0 bool, 1 integer, 2 floating (PyTorch's type-promotion categories)."""
    return {"b": 0, "i": 1, "u": 1}.get(t.dtype.kind, 2)


def _float_input(a: Any) -> Tensor:
    """A math function's operand: integer and bool tensors become float32, as PyTorch's exp/log/sqrt."""
    a = as_tensor(a)
    return a if a.dtype.kind in "fc" else Tensor._from_array(a.data.astype(DEFAULT_FLOAT))


class Add(Function):
    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        ctx.shapes = (a.shape, b.shape)
        return a + b

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any]:
        sa, sb = ctx.shapes
        return sum_to_shape(g, sa), sum_to_shape(g, sb)


class Sub(Function):
    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        ctx.shapes = (a.shape, b.shape)
        return a - b

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any]:
        sa, sb = ctx.shapes
        return sum_to_shape(g, sa), (sum_to_shape(-g, sb) if ctx.needs_input_grad[1] else None)


class Mul(Function):
    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any]:
        a, b = ctx.saved_tensors
        ga = sum_to_shape(g * b, a.shape) if ctx.needs_input_grad[0] else None
        gb = sum_to_shape(g * a, b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any]:
        a, b = ctx.saved_tensors
        ga = sum_to_shape(g / b, a.shape) if ctx.needs_input_grad[0] else None
        gb = sum_to_shape(-g * a / (b * b), b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Pow(Function):
    """a ** b; d/da = b a^(b-1), d/db = a^b log a (only computed when b requires grad).

    As PyTorch: d/da is 0 where b == 0 (a^0 is constant, even at a == 0 where b a^(b-1) is
    0 * inf), and d/db is 0 where a == 0 and b >= 0 (a^b log a would be 0 * -inf)."""

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        out = a**b
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any]:
        a, b, out = ctx.saved_tensors
        xp = xp_of(a)
        ga = gb = None
        with quiet(xp):
            if ctx.needs_input_grad[0]:
                ga = sum_to_shape(g * xp.where(b == 0, 0, b * a ** (b - 1)), a.shape)
            if ctx.needs_input_grad[1]:
                gb = sum_to_shape(g * xp.where((a == 0) & (b >= 0), 0, out * xp.log(a)), b.shape)
        return ga, gb

    @staticmethod
    def backward_graph(ctx: Context, g: Tensor) -> tuple[Any, Any]:
        a, b, out = ctx.saved_tensors
        ga = gb = None
        with quiet(xp_of(a.data)):
            if ctx.needs_input_grad[0]:
                ga = sum_to_shape(g * where(b.data == 0, 0, b * a ** (b - 1)), a.shape)
            if ctx.needs_input_grad[1]:
                gb = sum_to_shape(g * where((a.data == 0) & (b.data >= 0), 0, out * log(a)), b.shape)
        return ga, gb


def _tie_split(ctx: Context, g: Any, wins: Any, ties: Any, a_shape: Any, b_shape: Any) -> tuple[Any, Any]:
    """maximum/minimum's backward: the gradient goes to the winner, half to each input on a tie."""
    share = wins.astype(g.dtype)  # a constant (piecewise), so this serves Tensors too
    share += g.dtype.type(0.5) * ties
    ga = sum_to_shape(g * share, a_shape) if ctx.needs_input_grad[0] else None
    gb = sum_to_shape(g * (1 - share), b_shape) if ctx.needs_input_grad[1] else None
    return ga, gb


class Maximum(Function):
    """Elementwise max; on ties the gradient is split evenly between the two inputs."""

    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        ctx.save_for_backward(a, b)
        return xp_of(a, b).maximum(a, b)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any]:
        a, b = (array_of(t) for t in ctx.saved_tensors)
        return _tie_split(ctx, g, a > b, a == b, a.shape, b.shape)


class Minimum(Function):
    """Elementwise min; on ties the gradient is split evenly between the two inputs."""

    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        ctx.save_for_backward(a, b)
        return xp_of(a, b).minimum(a, b)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any]:
        a, b = (array_of(t) for t in ctx.saved_tensors)
        return _tie_split(ctx, g, a < b, a == b, a.shape, b.shape)


class Neg(Function):
    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, a: Any) -> Any:
        return -a

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        return -g


class Exp(Function):
    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, a: Any) -> Any:
        out = xp_of(a).exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (out,) = ctx.saved_tensors
        return g * out


class Log(Function):
    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, a: Any) -> Any:
        ctx.save_for_backward(a)
        return xp_of(a).log(a)

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (a,) = ctx.saved_tensors
        return g / a


class Sqrt(Function):
    """sqrt(a); nan below 0 and an infinite gradient at 0, without numpy warnings, as PyTorch."""

    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, a: Any) -> Any:
        xp = xp_of(a)
        with quiet(xp):
            out = xp.sqrt(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (out,) = ctx.saved_tensors
        with np.errstate(divide="ignore", invalid="ignore"):  # g may be a Tensor (create_graph): no xp_of
            return g / (2 * out)


class Abs(Function):
    """|a|; the gradient at 0 is 0 (sign(0) = 0), as PyTorch."""

    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, a: Any) -> Any:
        ctx.save_for_backward(a)
        return xp_of(a).abs(a)

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        a = array_of(ctx.saved_tensors[0])
        return g * xp_of(a).sign(a)


class Clamp(Function):
    """Clip into [lo, hi]; the gradient passes where lo <= a <= hi (boundaries included, as PyTorch)."""

    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, a: Any, lo: Any, hi: Any) -> Any:
        xp = xp_of(a)
        mask = xp.ones(a.shape, dtype=bool)
        out = a
        if lo is not None:
            mask &= a >= lo
            out = xp.maximum(out, lo)
        if hi is not None:
            mask &= a <= hi
            out = xp.minimum(out, hi)
        ctx.save_for_backward(mask)
        return out.astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None, None]:
        (mask,) = ctx.saved_tensors
        return g * mask, None, None


class Where(Function):
    """``cond ? a : b`` with broadcasting; cond carries no gradient."""

    differentiable_backward = True

    @staticmethod
    def forward(ctx: Context, cond: Any, a: Any, b: Any) -> Any:
        ctx.save_for_backward(cond)
        ctx.shapes = (a.shape, b.shape)
        return xp_of(a, b).where(cond, a, b)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[None, Any, Any]:
        (cond,) = ctx.saved_tensors
        sa, sb = ctx.shapes
        ga = sum_to_shape(g * cond, sa) if ctx.needs_input_grad[1] else None
        gb = sum_to_shape(g * ~cond, sb) if ctx.needs_input_grad[2] else None
        return None, ga, gb


def _apply_binary(name: str, op: type[Function], a: Tensor, b: Tensor) -> Tensor:
    """``op.apply(a, b)``, turning numpy's anonymous broadcasting error into one naming the op."""
    try:
        return op.apply(a, b)
    except ValueError:
        try:
            np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            raise ValueError(
                f"{name}: shapes {a.shape} and {b.shape} do not broadcast "
                "(aligned from the right, each pair of dims must be equal or contain a 1)"
            ) from None
        raise


def add(a: Any, b: Any) -> Tensor:
    return _apply_binary("add", Add, *_binary(a, b))


def sub(a: Any, b: Any) -> Tensor:
    return _apply_binary("sub", Sub, *_binary(a, b))


def mul(a: Any, b: Any) -> Tensor:
    return _apply_binary("mul", Mul, *_binary(a, b))


def div(a: Any, b: Any) -> Tensor:
    a, b = _binary(a, b)
    if a.dtype.kind in "iub" and b.dtype.kind in "iub":  # true division of integers gives float32, as PyTorch
        a, b = _float_input(a), _float_input(b)
    return _apply_binary("div", Div, a, b)


def pow(a: Any, b: Any) -> Tensor:  # noqa: A001 - mirrors the operator's name
    return _apply_binary("pow", Pow, *_binary(a, b))


def maximum(a: Any, b: Any) -> Tensor:
    return _apply_binary("maximum", Maximum, *_binary(a, b))


def minimum(a: Any, b: Any) -> Tensor:
    return _apply_binary("minimum", Minimum, *_binary(a, b))


def neg(a: Tensor) -> Tensor:
    return Neg.apply(as_tensor(a))


def exp(a: Tensor) -> Tensor:
    return Exp.apply(_float_input(a))


def log(a: Tensor) -> Tensor:
    return Log.apply(_float_input(a))


def sqrt(a: Tensor) -> Tensor:
    return Sqrt.apply(_float_input(a))


def abs(a: Tensor) -> Tensor:  # noqa: A001 - mirrors the builtin's name
    return Abs.apply(as_tensor(a))


def clamp(a: Tensor, min: Any = None, max: Any = None) -> Tensor:  # noqa: A002 - PyTorch's names
    """Clip ``a`` into [min, max]. On a bound, the gradient goes to ``a``, as PyTorch's clamp (with
    number or tensor bounds); a tensor bound gets the gradient where it replaced ``a``."""
    if min is None and max is None:
        raise ValueError("clamp: give at least one of min and max")
    if isinstance(min, Tensor) or isinstance(max, Tensor):
        out = as_tensor(a)
        if min is not None:
            out = where(out < min, min, out)  # not maximum(): that splits the gradient on a tie
        if max is not None:
            out = where(out > max, max, out)
        return out
    return Clamp.apply(as_tensor(a), min, max)


clip = clamp


def where(cond: Any, a: Any, b: Any) -> Tensor:
    """Pick from ``a`` where ``cond`` is true, else from ``b`` (differentiable in a and b)."""
    a, b = _binary(a, b)
    c = cond.data if isinstance(cond, Tensor) else cond
    xp = xp_of(a.data)
    c = xp.asarray(c)
    if c.dtype != bool:
        raise TypeError(f"where: the condition must be a bool tensor, got dtype {c.dtype} (compare first, e.g. x > 0)")
    return Where.apply(c, a, b)


def _compare(op: str, a: Any, b: Any) -> Tensor:
    a, b = _binary(a, b)
    if a.device != b.device:
        raise RuntimeError(f"{op}: tensors on {a.device} and {b.device}")
    result = {
        "lt": a.data.__lt__,
        "le": a.data.__le__,
        "gt": a.data.__gt__,
        "ge": a.data.__ge__,
        "eq": a.data.__eq__,
        "ne": a.data.__ne__,
    }[op](b.data)
    return Tensor._from_array(result)


def lt(a: Any, b: Any) -> Tensor:
    return _compare("lt", a, b)


def le(a: Any, b: Any) -> Tensor:
    return _compare("le", a, b)


def gt(a: Any, b: Any) -> Tensor:
    return _compare("gt", a, b)


def ge(a: Any, b: Any) -> Tensor:
    return _compare("ge", a, b)


def eq(a: Any, b: Any) -> Tensor:
    return _compare("eq", a, b)


def ne(a: Any, b: Any) -> Tensor:
    return _compare("ne", a, b)
