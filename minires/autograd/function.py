"""``Function``: the one mechanism every differentiable op uses, built-in or user-written.

A Function subclass gives ``forward(ctx, *args)`` and ``backward(ctx, *grad_outputs)`` on raw arrays
(numpy or cupy). ``Op.apply(*args)`` unwraps Tensors, runs forward, and, when a gradient is needed,
records a :class:`Node` in the graph so :func:`minires.autograd.engine.run_backward` can call
``backward`` later. ``backward`` returns one gradient per positional argument of ``forward``
(``None`` for arguments that are not tensors or need no gradient), as arrays (a Tensor is unwrapped).
Arrays saved with ``ctx.save_for_backward`` that belong to an input or output Tensor are checked
against its version counter when backward reads them (see :class:`Context`).

Example (the whole of a user-written op)::

    class Square(mr.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return 2 * x * grad

    y = Square.apply(t)
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from minires.autograd.grad_mode import is_grad_enabled
from minires.backend import xp_of

if TYPE_CHECKING:
    from minires.tensor import Tensor


class Context:
    """What forward hands to backward: saved arrays, flags, and any attribute the op sets.

    Saved arrays that are the data of one of the op's input or output Tensors (or a view of it)
    are checked against that Tensor's version counter when backward reads ``saved_tensors``: an
    in-place change in between raises instead of giving a silently wrong gradient, as PyTorch.
    """

    def __init__(self, needs_input_grad: tuple[bool, ...]) -> None:
        self.needs_input_grad = needs_input_grad
        self._saved: tuple[Any, ...] = ()
        self._non_differentiable: set[int] = set()
        self._saved_versions: tuple[tuple[int, Any, int], ...] = ()  # (saved index, counter, version)
        self._op_name = ""

    def save_for_backward(self, *arrays: Any) -> None:
        """Keep arrays for backward; they are freed once backward has run (unless retain_graph)."""
        self._saved = arrays

    @property
    def saved_tensors(self) -> tuple[Any, ...]:
        """The saved arrays; raises if a tensor whose data was saved has been changed in place since."""
        for index, counter, expected in self._saved_versions:
            if counter.version != expected:
                saved = self._saved[index]
                raise RuntimeError(
                    "one of the variables needed for gradient computation has been modified by an "
                    f"inplace operation: [{self._op_name}, {saved.dtype} {tuple(saved.shape)}] is at version "
                    f"{counter.version}; expected version {expected} instead. Hint: the tensor was changed "
                    "in place (+=, add_, x[i] = ..., an optimizer step) after the op saved it for backward; "
                    "change a clone() instead, or do the change after backward."
                )
        return self._saved

    def mark_non_differentiable(self, *output_indices: int) -> None:
        """Outputs at these positions (e.g. max-pool indices) carry no gradient."""
        self._non_differentiable.update(output_indices)


class Node:
    """One recorded call of a Function: where its input gradients go, and its outputs' hooks.

    ``edges[i]`` says where the gradient for forward's i-th positional argument goes: ``None`` (no
    gradient wanted), ``(node, output_index)`` for a tensor made by another op, or ``(None, leaf)``
    for a leaf tensor whose ``.grad`` accumulates it.
    """

    __slots__ = ("function", "ctx", "edges", "input_meta", "output_meta", "hooks", "retained", "freed")

    def __init__(self, function: type[Function], ctx: Context, edges: list[Any], input_meta: list[Any]):
        self.function = function
        self.ctx: Context | None = ctx
        self.edges = edges
        self.input_meta = input_meta  # (shape, dtype) per positional argument, None for non-tensors
        self.output_meta: list[tuple[tuple[int, ...], Any]] = []
        self.hooks: dict[int, list[Any]] = {}
        self.retained: dict[int, weakref.ref[Tensor]] = {}
        self.freed = False

    @property
    def name(self) -> str:
        """The op's name in ``<ReLUBackward>`` and graph labels: the class name less a ``Function`` suffix."""
        return self.function.__name__.removesuffix("Function")

    def release(self) -> None:
        """Drop what forward saved: backward through this node is no longer possible."""
        self.ctx = None
        self.freed = True

    def __repr__(self) -> str:
        return f"<{self.name}Backward>"


def _check_devices(name: str, tensors: list[Tensor]) -> None:
    if all(type(t.data) is np.ndarray for t in tensors):  # the common case, without asking each backend
        return
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        described = ", ".join(f"{t.device} (shape {tuple(t.shape)})" for t in tensors)
        raise RuntimeError(
            f"{name}: expected all tensors on one device, got tensors on {' and '.join(sorted(devices))}: "
            f"{described}. Move them with .to(device) first."
        )


def _owner(array: Any) -> Any:
    """The array that owns ``array``'s memory (numpy and cupy collapse view chains to it)."""
    base = getattr(array, "base", None)
    return array if base is None else base


def _record_saved_versions(ctx: Context, tensors: list[Tensor]) -> None:
    """Remember the version of each input/output Tensor whose data (or a view of it) ctx saved."""
    found = []
    for i, saved in enumerate(ctx._saved):
        if saved is None:
            continue
        owner = _owner(saved)
        for t in tensors:
            data = t.data
            if saved is data or owner is data or (owner is not saved and owner is _owner(data)):
                found.append((i, t._vc, t._vc.version))
                break
    ctx._saved_versions = tuple(found)


def _shares_memory(a: Any, b: Any) -> bool:
    """Whether a view op's output really is a view (reshape may have had to copy)."""
    if a is b:
        return True
    if type(a) is np.ndarray:
        return bool(np.may_share_memory(a, b))
    may_share = getattr(xp_of(a), "may_share_memory", None)  # numpy's and cupy's: a cheap bounds check
    return bool(may_share(a, b)) if may_share is not None else _owner(a) is _owner(b)


class Function:
    """Base class for differentiable ops. Subclass it and call ``YourOp.apply(*args)``.

    A Function whose output is a view of its first argument (reshape, permute, basic indexing) sets
    ``returns_view = True``: when the output really shares memory with the input, both share one
    version counter (an in-place change through either is seen by ops that saved the other).
    """

    returns_view = False

    @staticmethod
    def forward(ctx: Context, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    @staticmethod
    def backward(ctx: Context, *grad_outputs: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def apply(cls, *args: Any, **kwargs: Any) -> Any:
        from minires.tensor import Tensor

        tensors = [a for a in args if isinstance(a, Tensor)]
        if len(tensors) > 1:
            _check_devices(cls.__name__, tensors)
        needs = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        ctx = Context(needs)
        raw = [a.data if isinstance(a, Tensor) else a for a in args]
        out = cls.forward(ctx, *raw, **kwargs)
        is_tuple = isinstance(out, tuple)
        outputs = out if is_tuple else (out,)
        record = is_grad_enabled() and any(needs)
        # numpy reductions of a whole array return scalars (np.float64), not 0-d arrays; keep
        # Tensor.data an array so in-place updates (x.data[...] = 0, grad.zero_()) always work.
        results = [Tensor._from_array(np.asarray(o) if isinstance(o, np.generic) else o) for o in outputs]
        if cls.returns_view and _shares_memory(results[0].data, args[0].data):
            results[0]._make_view_of(args[0])
        if record:
            edges: list[Any] = []
            for a, need in zip(args, needs):
                if not need:
                    edges.append(None)
                elif a.grad_fn is None:
                    edges.append((None, a))
                else:
                    edges.append((a.grad_fn, a._output_index))
            meta = [(a.shape, a.dtype) if isinstance(a, Tensor) else None for a in args]
            if ctx._saved:
                ctx._op_name = cls.__name__
                _record_saved_versions(ctx, tensors + results)
            node = Node(cls, ctx, edges, meta)
            node.output_meta = [(r.shape, r.dtype) for r in results]
            for i, r in enumerate(results):
                if i not in ctx._non_differentiable and r.dtype.kind in "fc":
                    r.requires_grad = True
                    r.grad_fn = node
                    r._output_index = i
        return tuple(results) if is_tuple else results[0]
