"""The backward pass: walk the recorded graph in reverse topological order, without recursion.

A skip connection ``y = x + f(x)`` is a fan-out (``x`` feeds two ops) that rejoins (at the add);
the engine sums every gradient reaching a tensor before passing it on, so ``dL/dx`` is the sum of
the identity path's and the branch's contributions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from minires.autograd.function import Node
from minires.autograd.grad_mode import no_grad
from minires.backend import xp_of

if TYPE_CHECKING:
    from minires.tensor import Tensor


def topological_order(root: Node) -> list[Node]:
    """Nodes reachable from ``root``, each before every node it feeds gradients to (iterative DFS)."""
    post: list[Node] = []
    visited: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
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
            if edge is not None and edge[0] is not None and id(edge[0]) not in visited:
                stack.append((edge[0], False))
    post.reverse()
    return post


def _accumulate(current: Any, grad: Any) -> Any:
    # Never in place: the same array may have been handed to several inputs (e.g. by add's backward).
    return grad if current is None else current + grad


def _run_hooks(hooks: list[Any], grad: Any) -> Any:
    """Call each hook on the gradient; a returned Tensor replaces it, and must match it in shape,
    dtype and device (checked here, so the error names the hook rather than a later op)."""
    from minires.tensor import Tensor, _check_same_meta

    for hook in hooks:
        result = hook(Tensor._from_array(grad))
        if result is None:
            continue
        if not isinstance(result, Tensor):
            raise TypeError(f"hook {_hook_name(hook)} returned {type(result).__name__}; expected a Tensor or None")
        _check_same_meta(f"hook {_hook_name(hook)} returned a gradient that", result.data, Tensor._from_array(grad))
        grad = result.data
    return grad


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


def _check_grad(node: Node, index: int, grad: Any) -> Any:
    shape, dtype = node.input_meta[index]
    if tuple(grad.shape) != tuple(shape):
        raise RuntimeError(
            f"{node.name}.backward: gradient for input {index} has shape {tuple(grad.shape)}, "
            f"expected the input's shape {tuple(shape)}"
        )
    if grad.dtype != dtype:
        grad = grad.astype(dtype)
    return grad


def run_backward(root: Tensor, grad: Any, retain_graph: bool = False) -> None:
    """Backpropagate ``grad`` (an array shaped like ``root``) into every leaf that requires grad."""

    with no_grad():
        if root.grad_fn is None:
            _deliver_to_leaf(root, _run_hooks(root._hooks, grad))
            return
        pending: dict[int, list[Any]] = {id(root.grad_fn): [None] * len(root.grad_fn.output_meta)}
        pending[id(root.grad_fn)][root._output_index] = grad
        leaf_grads: dict[int, tuple[Tensor, Any]] = {}
        for node in topological_order(root.grad_fn):
            out_grads = pending.pop(id(node), None)
            if out_grads is None:
                continue
            if node.freed:
                raise RuntimeError(
                    f"backward: trying to backward through {node.name} a second time: its saved "
                    "values were freed after the first backward. Pass retain_graph=True to the first "
                    "backward() to keep them."
                )
            xp_source = next(g for g in out_grads if g is not None)
            for i, g in enumerate(out_grads):
                if g is None:
                    shape, dtype = node.output_meta[i]
                    out_grads[i] = xp_of(xp_source).zeros(shape, dtype=dtype)
                if i in node.hooks:
                    out_grads[i] = _run_hooks(node.hooks[i], out_grads[i])
                if i in node.retained:
                    owner = node.retained[i]()
                    if owner is not None:
                        owner._accumulate_grad(out_grads[i])
            in_grads = _unwrap_grads(node, node.function.backward(node.ctx, *out_grads))
            if len(in_grads) != len(node.edges):
                raise RuntimeError(
                    f"{node.name}.backward returned {len(in_grads)} gradients, expected "
                    f"{len(node.edges)} (one per argument of forward, None where there is none)"
                )
            if not retain_graph:
                node.release()
            for index, (edge, g) in enumerate(zip(node.edges, in_grads)):
                if edge is None or g is None:
                    continue
                g = _check_grad(node, index, g)
                parent, target = edge
                if parent is None:
                    prev = leaf_grads.get(id(target))
                    leaf_grads[id(target)] = (target, _accumulate(None if prev is None else prev[1], g))
                else:
                    slots = pending.setdefault(id(parent), [None] * len(parent.output_meta))
                    slots[target] = _accumulate(slots[target], g)
        for leaf, g in leaf_grads.values():
            _deliver_to_leaf(leaf, _run_hooks(leaf._hooks, g))


def _deliver_to_leaf(leaf: Tensor, grad: Any) -> None:
    if leaf.requires_grad:
        leaf._accumulate_grad(grad)
