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

Gradients of gradients (``backward(create_graph=True)``, ``mr.autograd.grad(..., create_graph=True)``)
need a backward that is itself differentiable, written with Tensor ops so that it records a graph.
The raw-array ``backward`` above is the fast first-order path and is once-differentiable: under
``create_graph=True`` a Function raises unless it opts in, in one of two ways:

- ``differentiable_backward = True``: its ``backward`` uses only operations Tensors also have
  (``*``, ``+``, ``-``, ``/``, ``.sum(axis=..., keepdims=...)``, ``.reshape`` ...; no ``np.``/``xp.``
  calls). The engine then runs the same ``backward`` on Tensors. ``Square`` above qualifies.
- ``backward_graph(ctx, *grad_outputs)``: a second backward written with Tensor ops (``mr.exp``,
  ``F.conv2d`` ...), for when the raw one uses array functions::

    class Sin(mr.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return np.sin(x)

        @staticmethod
        def backward(ctx, grad):                 # fast path: arrays in, arrays out
            (x,) = ctx.saved_tensors
            return grad * np.cos(x)

        @staticmethod
        def backward_graph(ctx, grad):           # create_graph=True: Tensors in, Tensors out
            (x,) = ctx.saved_tensors             # now a Tensor on the graph
            return grad * Cos.apply(x)           # Cos: another Function (with its own backward_graph)

In both, ``ctx.saved_tensors`` gives Tensors: an array saved from forward's arguments or outputs
(the very objects, not copies) becomes a Tensor connected to the graph where that argument or output
came from; a boolean or integer array (a mask, indices) stays an array (a constant). A saved
floating-point array that is neither (an intermediate) is refused, since how it depends on the
inputs is unknown: save the argument and recompute the value with Tensor ops instead
(``ctx.saved_arrays`` gives the raw saved values, for those that are constants).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, NamedTuple

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


class Edge(NamedTuple):
    """The gradient goes to output ``output_index`` of ``node``: the input was made by another op."""

    node: Node
    output_index: int


class LeafEdge(NamedTuple):
    """The gradient accumulates into ``tensor.grad``: the input is a leaf (a parameter, a user's tensor)."""

    tensor: Tensor


GradientEdge = Edge | LeafEdge


def gradient_edge(t: Tensor) -> GradientEdge:
    """Where a gradient for ``t`` goes: the op that made it (and which of its outputs ``t`` is), or ``t`` itself."""
    # tuple.__new__ builds the named tuple without NamedTuple's Python-level __new__: this runs for
    # every recorded input of every op, on the first-order fast path.
    if t.grad_fn is None:
        return tuple.__new__(LeafEdge, (t,))
    return tuple.__new__(Edge, (t.grad_fn, t._output_index))


def _saved_source(k: int, saved: Any, ids: tuple[tuple[int, ...], tuple[int, ...]]) -> tuple[str, int] | None:
    """Where the k-th saved array came from: ``("input", i)`` or ``("output", j)`` if it is that very
    object, else None. ``ids`` are the ids of forward's arguments and outputs taken when it was
    recorded; the saved array was alive together with them then, so equal ids mean the same object."""
    inputs, outputs = ids
    if k < len(inputs) and inputs[k] == id(saved):  # ops save their arguments in order: x * x.detach() stays apart
        return ("input", k)
    for i, a in enumerate(inputs):
        if a == id(saved):
            return ("input", i)
    for j, o in enumerate(outputs):
        if o == id(saved):
            return ("output", j)
    return None


class Node:
    """One recorded call of a Function: where its input gradients go, and its outputs' hooks.

    ``edges[i]`` says where the gradient for forward's i-th positional argument goes: ``None`` (no
    gradient wanted), an :class:`Edge` for a tensor made by another op, or a :class:`LeafEdge`
    for a leaf tensor whose ``.grad`` accumulates it.
    """

    __slots__ = (
        "function", "ctx", "edges", "input_meta", "output_meta", "hooks", "retained", "freed", "forward_ids"
    )

    def __init__(
        self, function: type[Function], ctx: Context, edges: list[GradientEdge | None], input_meta: list[Any]
    ):
        self.function = function
        self.ctx: Context | None = ctx
        self.edges = edges
        self.input_meta = input_meta  # (shape, dtype) per positional argument, None for non-tensors
        self.output_meta: list[tuple[tuple[int, ...], Any]] = []
        self.hooks: dict[int, list[Any]] = {}
        self.retained: dict[int, weakref.ref[Tensor]] = {}
        self.freed = False
        self.forward_ids: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # see _saved_source

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


class TensorContext:
    """What a differentiable backward sees: the op's :class:`Context` (its attributes, flags and
    ``needs_input_grad``), with ``saved_tensors`` as Tensors on the graph (see the module docstring)."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node.ctx, name)

    @property
    def raw(self) -> Context:
        """The op's own Context, e.g. to call its raw backward as a linear map of the gradient."""
        assert self._node.ctx is not None  # the engine refuses a freed node before it gets here
        return self._node.ctx

    @property
    def saved_arrays(self) -> tuple[Any, ...]:
        """The saved values exactly as forward saved them (raw arrays): for values that are constants."""
        return self._node.ctx.saved_tensors

    @property
    def saved_tensors(self) -> tuple[Any, ...]:
        return tuple(self.saved_tensor(k) for k in range(len(self._node.ctx.saved_tensors)))

    def input_tensor(self, i: int, value: Any) -> Tensor:
        """``value`` (forward's argument i, e.g. rebuilt from a reshaped copy forward saved) as a Tensor
        whose gradient flows where argument i's does. The caller vouches that the values are the argument's."""
        if tuple(value.shape) != tuple(self._node.input_meta[i][0]):
            raise RuntimeError(
                f"{self._node.name}: input_tensor({i}) got shape {tuple(value.shape)}, "
                f"argument {i} has shape {tuple(self._node.input_meta[i][0])}"
            )
        return _rewrap(value, self._node.edges[i], exact=False)

    def saved_tensor(self, k: int) -> Any:
        """The k-th saved value: a Tensor on the graph for a forward argument or output, an array
        for a mask or indices; a floating-point intermediate is refused (see the module docstring)."""
        node = self._node
        array = node.ctx.saved_tensors[k]
        if getattr(array, "dtype", None) is None or array.dtype.kind not in "fc":
            return array  # a mask, indices, or None: stays as it is
        source = _saved_source(k, array, node.forward_ids)
        if source is None:
            raise RuntimeError(
                f"{node.name}: saved value {k} is a floating-point array that is neither an argument nor "
                "an output of forward, so its dependence on the inputs is unknown and it cannot be "
                "differentiated (create_graph=True). Save the argument or output itself and recompute "
                "the value with Tensor ops (ctx.saved_arrays gives the raw values, for constants)."
            )
        if source[0] == "input":
            return _rewrap(array, node.edges[source[1]])
        j = source[1]
        differentiable = node.output_meta[j][1].kind in "fc" and j not in node.ctx._non_differentiable
        return _rewrap(array, Edge(node, j) if differentiable else None)


def _rewrap(array: Any, edge: GradientEdge | None, exact: bool = True) -> Tensor:
    """``array`` as a Tensor whose gradient flows along ``edge`` (a constant when ``edge`` is None).
    For a leaf: the leaf itself, whose data must be ``array`` (``exact``) or equal to it."""
    from minires.tensor import Tensor

    if type(edge) is LeafEdge and (edge.tensor.data is array or not exact):
        return edge.tensor
    t = Tensor._from_array(array)
    if type(edge) is Edge:
        t.requires_grad = True
        t.grad_fn = edge.node
        t._output_index = edge.output_index
    elif type(edge) is LeafEdge:  # the leaf's data was replaced since forward: stand in for it
        raise RuntimeError(
            "backward: a leaf tensor's .data was replaced after it was used; its saved value no longer "
            "matches it, so it cannot be differentiated (create_graph=True)"
        )
    return t


def differentiable_backward(node: Node, grads: list[Tensor]) -> Any:
    """Run ``node``'s backward on Tensors, recording its graph (the engine's ``create_graph`` path)."""
    fn = node.function
    ctx = TensorContext(node)
    if fn.backward_graph is not None:
        return fn.backward_graph(ctx, *grads)
    if fn.differentiable_backward:
        return fn.backward(ctx, *grads)
    raise RuntimeError(
        f"{node.name} has no differentiable backward, so a gradient through it cannot be differentiated "
        f"again (create_graph=True). Its backward(ctx, *grads) works on raw arrays (first order only); "
        "opt in with differentiable_backward = True when that backward uses only operations Tensors also "
        "have, or define backward_graph(ctx, *grads) with Tensor ops (see help(minires.Function))."
    )


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

    ``backward`` works on raw arrays (first order); opt in to gradients of gradients with
    ``differentiable_backward = True`` or a ``backward_graph`` (see the module docstring).

    A Function whose output is a view of its first argument (reshape, permute, basic indexing) sets
    ``returns_view = True``: when the output really shares memory with the input, both share one
    version counter (an in-place change through either is seen by ops that saved the other).
    """

    #: True when ``backward`` uses only operations Tensors also have, so it can run on Tensors.
    differentiable_backward: bool = False
    #: Optional ``backward_graph(ctx, *grad_tensors)`` written with Tensor ops (for create_graph=True).
    backward_graph: Any = None
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
            edges = [gradient_edge(a) if need else None for a, need in zip(args, needs)]
            meta = [(a.shape, a.dtype) if isinstance(a, Tensor) else None for a in args]
            node = Node(cls, ctx, edges, meta)
            node.output_meta = [(r.shape, r.dtype) for r in results]
            if ctx._saved:
                ctx._op_name = cls.__name__.removesuffix("Function")
                _record_saved_versions(ctx, tensors + results)
                # cheap ids now; which saved array is which argument is worked out if needed
                node.forward_ids = (tuple(map(id, raw)), tuple(map(id, outputs)))
            for i, r in enumerate(results):
                if i not in ctx._non_differentiable and r.dtype.kind in "fc":
                    r.requires_grad = True
                    r.grad_fn = node
                    r._output_index = i
        return tuple(results) if is_tuple else results[0]
