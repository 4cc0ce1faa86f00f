"""The backward pass: walk the recorded graph in reverse topological order, without recursion.

A skip connection ``y = x + f(x)`` is a fan-out (``x`` feeds two ops) that rejoins (at the add);
the engine sums every gradient reaching a tensor before passing it on, so ``dL/dx`` is the sum of
the identity path's and the branch's contributions.

Two ways to run it, one walk:

- first order (the default): gradients are raw arrays, each node's ``backward(ctx, *arrays)`` runs
  under ``no_grad`` and nothing new is recorded — the fast path;
- ``create_graph=True``: gradients are Tensors, each node's differentiable backward runs with
  recording on, so the gradients get a graph of their own and can be differentiated again
  (Hessian-vector products, gradient penalties). See :class:`minires.autograd.function.Function`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from minires import backend
from minires.autograd.function import Edge, GradientEdge, LeafEdge, Node, differentiable_backward, gradient_edge
from minires.autograd.grad_mode import enable_grad, no_grad

if TYPE_CHECKING:
    from minires.tensor import Tensor


def topological_order(roots: Node | Sequence[Node]) -> list[Node]:
    """Nodes reachable from ``roots``, each before every node it feeds gradients to (iterative DFS)."""
    post: list[Node] = []
    visited: set[int] = set()
    stack: list[tuple[Node, bool]] = [(r, False) for r in ([roots] if isinstance(roots, Node) else roots)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            post.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for edge in node.edges:
            if type(edge) is Edge and id(edge.node) not in visited:
                stack.append((edge.node, False))
    post.reverse()
    return post


class _ArrayGrads:
    """First order: gradients are raw arrays and ``Function.backward`` computes them."""

    @staticmethod
    def zeros(like: Any, shape: tuple[int, ...], dtype: Any) -> Any:
        return backend.xp_of(like).zeros(shape, dtype=dtype)

    @staticmethod
    def accumulate(current: Any, grad: Any) -> Any:
        # Never in place: the same array may have been handed to several inputs (e.g. by add's backward).
        if current is None:
            return grad
        if type(current) is np.ndarray and type(grad) is np.ndarray and current.shape == grad.shape and current.dtype == grad.dtype:
            from minires.ops import _procs  # here: minires.ops imports this module

            return _procs.add(current, grad)  # the sum in shared memory while worker processes run
        return current + grad

    @classmethod
    def run_hooks(cls, hooks: list[Any], grad: Any) -> Any:
        """Each hook sees the gradient as a Tensor; one that returns a Tensor replaces it, and must match
        it in shape, dtype and device (checked here, so the error names the hook rather than a later op)."""
        from minires.tensor import Tensor, _check_same_meta

        for hook in hooks:
            seen = cls.as_tensor(grad)
            result = hook(seen)
            if result is None:
                continue
            if not isinstance(result, Tensor):
                raise TypeError(f"hook {_hook_name(hook)} returned {type(result).__name__}; expected a Tensor or None")
            _check_same_meta(f"hook {_hook_name(hook)} returned a gradient that", result.data, seen)
            grad = cls.from_hook(result)
        return grad

    @staticmethod
    def as_tensor(grad: Any) -> Any:
        from minires.tensor import Tensor

        return Tensor._from_array(grad)

    @staticmethod
    def from_hook(result: Any) -> Any:
        return result.data

    @staticmethod
    def cast(grad: Any, dtype: Any) -> Any:
        return grad.astype(dtype)

    @staticmethod
    def deliver(tensor: Tensor, grad: Any) -> None:
        tensor._accumulate_grad(grad)


def _hook_name(hook: Any) -> str:
    return getattr(hook, "__qualname__", None) or repr(hook)


def _unwrap_grads(node: Node, grads: Any) -> tuple[Any, ...]:
    """backward's return value as a tuple of arrays (a Tensor returned by a custom backward is unwrapped)."""
    from minires.tensor import Tensor

    if not isinstance(grads, tuple):
        grads = (grads,)
    out = []
    for g in grads:
        if isinstance(g, Tensor):
            g = g.data
        elif g is not None and not hasattr(g, "shape"):
            raise TypeError(
                f"{node.name}.backward returned a {type(g).__name__}; expected an array or Tensor per input (or None)"
            )
        out.append(g)
    return tuple(out)


class _TensorGrads(_ArrayGrads):
    """``create_graph=True``: gradients are Tensors and each node's differentiable backward records
    the graph of the gradient computation itself (accumulation is the same ``+``, now recorded)."""

    @staticmethod
    def zeros(like: Any, shape: tuple[int, ...], dtype: Any) -> Any:
        from minires.tensor import Tensor

        return Tensor._from_array(backend.xp_of(like.data).zeros(shape, dtype=dtype))

    @staticmethod
    def as_tensor(grad: Any) -> Any:
        return grad

    @staticmethod
    def from_hook(result: Any) -> Any:
        return result

    @staticmethod
    def cast(grad: Any, dtype: Any) -> Any:
        return grad.to(dtype=dtype)

    @staticmethod
    def deliver(tensor: Tensor, grad: Any) -> None:
        # As PyTorch's AccumulateGrad under create_graph: out of place, keeping the graph; the
        # first gradient is a copy (``grad * 1``) so two leaves never share one ``.grad`` tensor.
        tensor.grad = grad * 1 if tensor.grad is None else tensor.grad + grad


def _check_grad(node: Node, index: int, grad: Any, kind: Any) -> Any:
    shape, dtype = node.input_meta[index]
    if tuple(grad.shape) != tuple(shape):
        raise RuntimeError(
            f"{node.name}.backward: gradient for input {index} has shape {tuple(grad.shape)}, "
            f"expected the input's shape {tuple(shape)}"
        )
    return grad if grad.dtype == dtype else kind.cast(grad, dtype)


def _nodes_leading_to(order: list[Node], targets: set[tuple[int, int]], leaves: set[int]) -> set[int]:
    """Ids of the nodes whose backward can reach a target (an op output ``(id(node), index)`` or a
    leaf ``id(tensor)``): ``autograd.grad`` runs only those, as PyTorch does."""
    needed: set[int] = set()
    for node in reversed(order):  # inputs' producers before their consumers
        for edge in node.edges:
            if type(edge) is LeafEdge:
                hit = id(edge.tensor) in leaves
            elif type(edge) is Edge:
                hit = id(edge.node) in needed or (id(edge.node), edge.output_index) in targets
            else:
                hit = False
            if hit:
                needed.add(id(node))
                break
    return needed


def run_backward(
    roots: Sequence[Tensor],
    grads: Sequence[Any],
    retain_graph: bool = False,
    create_graph: bool = False,
    inputs: Sequence[Tensor] | None = None,
) -> list[Any] | None:
    """Backpropagate ``grads[k]`` (shaped like ``roots[k]``; arrays, or Tensors when ``create_graph``).

    Without ``inputs``: accumulate into ``.grad`` of every leaf that requires grad (``backward()``),
    and return None. With ``inputs``: touch no ``.grad``; return each input's gradient (None where
    no path leads to it), running only the nodes on a path to an input (``autograd.grad``).
    """
    kind = _TensorGrads if create_graph else _ArrayGrads
    with enable_grad() if create_graph else no_grad():
        return _walk(roots, grads, retain_graph, kind, inputs)


def _walk(roots: Sequence[Tensor], grads: Sequence[Any], retain_graph: bool, kind: Any, inputs: Any) -> Any:
    pending: dict[int, list[Any]] = {}
    leaf_grads: dict[int, tuple[Tensor, Any]] = {}
    root_nodes: list[Node] = []
    for root, grad in zip(roots, grads):
        _send(gradient_edge(root), grad, pending, leaf_grads, kind)
        if root.grad_fn is not None:
            root_nodes.append(root.grad_fn)
    order = topological_order(root_nodes)

    targets: dict[tuple[int, int], int] = {}  # op output -> position in inputs
    leaf_targets: dict[int, int] = {}  # id(leaf) -> position in inputs
    for position, t in enumerate(inputs or ()):
        edge = gradient_edge(t)
        if type(edge) is Edge:
            targets[(id(edge.node), edge.output_index)] = position
        else:
            leaf_targets[id(t)] = position
    needed = None if inputs is None else _nodes_leading_to(order, set(targets), set(leaf_targets))
    owners = {node_id for node_id, _ in targets}  # nodes whose outputs autograd.grad asked for
    captured: list[Any] = [None] * len(inputs or ())

    for node in order:
        out_grads = pending.pop(id(node), None)
        if out_grads is None or (needed is not None and id(node) not in needed and id(node) not in owners):
            continue  # autograd.grad runs (and calls the hooks of) only what leads to its inputs
        like = next(g for g in out_grads if g is not None)
        for i, g in enumerate(out_grads):
            if g is None:
                shape, dtype = node.output_meta[i]
                out_grads[i] = g = kind.zeros(like, shape, dtype)
            if i in node.hooks:
                out_grads[i] = g = kind.run_hooks(node.hooks[i], g)
            if needed is None:
                if i in node.retained:
                    owner = node.retained[i]()
                    if owner is not None:
                        kind.deliver(owner, g)
            elif (id(node), i) in targets:
                captured[targets[(id(node), i)]] = g
        if needed is not None and id(node) not in needed:
            continue
        if node.freed:
            raise RuntimeError(
                f"backward: trying to backward through {node.name} a second time: its saved "
                "values were freed after the first backward. Pass retain_graph=True to the first "
                "backward() to keep them."
            )
        if kind is _ArrayGrads:  # first order: the op's raw-array backward, as always
            in_grads = _unwrap_grads(node, node.function.backward(node.ctx, *out_grads))
        else:
            in_grads = differentiable_backward(node, out_grads)
            if not isinstance(in_grads, tuple):
                in_grads = (in_grads,)
        if len(in_grads) != len(node.edges):
            raise RuntimeError(
                f"{node.name}.backward returned {len(in_grads)} gradients, expected "
                f"{len(node.edges)} (one per argument of forward, None where there is none)"
            )
        if not retain_graph:
            node.release()
        for index, (edge, g) in enumerate(zip(node.edges, in_grads)):
            if edge is not None and g is not None:
                _send(edge, _check_grad(node, index, g, kind), pending, leaf_grads, kind)

    for leaf, g in leaf_grads.values():
        if needed is not None and id(leaf) not in leaf_targets:
            continue
        g = kind.run_hooks(leaf._hooks, g)
        if needed is not None:
            captured[leaf_targets[id(leaf)]] = g
        elif leaf.requires_grad:
            kind.deliver(leaf, g)
    return None if inputs is None else captured


def _send(edge: GradientEdge, grad: Any, pending: dict[int, list[Any]], leaf_grads: dict[int, Any], kind: Any) -> None:
    """Add ``grad`` to what the edge's target has received so far."""
    if type(edge) is LeafEdge:
        prev = leaf_grads.get(id(edge.tensor))
        leaf_grads[id(edge.tensor)] = (edge.tensor, kind.accumulate(None if prev is None else prev[1], grad))
    else:
        slots = pending.setdefault(id(edge.node), [None] * len(edge.node.output_meta))
        slots[edge.output_index] = kind.accumulate(slots[edge.output_index], grad)


def root_gradient(name: str, root: Tensor, gradient: Any, create_graph: bool) -> Any:
    """The starting gradient for ``root``: ones for a one-element tensor when ``gradient`` is None,
    else ``gradient`` checked against the root's shape and device (an array, or a Tensor when
    ``create_graph`` so that a gradient which itself requires grad is differentiated through)."""
    from minires.tensor import Tensor

    if not root.requires_grad:
        raise RuntimeError(
            f"{name}: this tensor does not require grad and has no grad_fn "
            "(no input of the ops that made it requires grad, or it was made under no_grad)"
        )
    xp = backend.xp_of(root.data)
    if gradient is None:
        if root.data.size != 1:
            raise RuntimeError(
                f"{name}: grad can be created implicitly only for scalar outputs, got shape {root.shape}; "
                "pass gradient= with the output's shape"
            )
        grad = xp.ones(root.data.shape, dtype=root.dtype)
        return Tensor._from_array(grad) if create_graph else grad
    grad = gradient.data if isinstance(gradient, Tensor) else gradient
    try:  # an array of another device must be refused before xp.asarray tries to convert it
        grad_device: str | None = backend.device_of(grad)
    except TypeError:
        grad_device = None
    if grad_device is not None and grad_device != root.device and not isinstance(grad, np.generic):
        raise RuntimeError(f"{name}: gradient is on {grad_device}, the output on {root.device}")
    if not isinstance(grad, xp.ndarray):
        grad = xp.asarray(grad, dtype=root.dtype)
    if tuple(grad.shape) != root.shape:
        raise RuntimeError(f"{name}: gradient has shape {tuple(grad.shape)}, expected the output's shape {root.shape}")
    if not create_graph:
        return grad.astype(root.dtype, copy=False)
    if isinstance(gradient, Tensor) and gradient.data is grad:
        return gradient if gradient.dtype == root.dtype else gradient.to(dtype=root.dtype)
    return Tensor._from_array(grad.astype(root.dtype, copy=False))
