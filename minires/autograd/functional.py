"""Jacobian products of a function, exactly (no finite differences), as ``torch.autograd.functional``.

``vjp`` is one backward pass. ``jvp`` uses the double-vjp trick: the vector-Jacobian product
``g(v) = J^T v`` is linear in ``v``, so differentiating ``<g(v), u>`` with respect to ``v`` gives
``J u`` — two reverse passes, the first with ``create_graph=True``. ``hvp`` differentiates the
gradient of a scalar function once more (``H v``); ``hessian`` does that along every basis vector.

``inputs`` is a Tensor or a tuple of Tensors; ``v`` (and the results) follow the same structure.
``func`` returns a Tensor or a tuple of Tensors. With ``create_graph=False`` the results are
detached; with ``True`` they keep a graph back to ``inputs`` (for higher derivatives).
"""

from __future__ import annotations

from typing import Any, Callable

from minires.autograd.grad_mode import enable_grad
from minires.autograd.gradients import grad
from minires.tensor import Tensor


def _as_tuple(name: str, what: str, value: Any) -> tuple[tuple[Tensor, ...], bool]:
    """(value as a tuple of Tensors, whether it was a bare Tensor)."""
    if isinstance(value, Tensor):
        return (value,), True
    if isinstance(value, (tuple, list)) and all(isinstance(v, Tensor) for v in value):
        return tuple(value), False
    raise TypeError(f"{name}: {what} must be a Tensor or a tuple of Tensors, got {type(value).__name__}")


def _prepare_inputs(name: str, inputs: Any, create_graph: bool) -> tuple[tuple[Tensor, ...], bool]:
    xs, single = _as_tuple(name, "inputs", inputs)
    for k, x in enumerate(xs):
        if x.dtype.kind not in "fc":
            raise TypeError(f"{name}: input {k} must be floating point, got dtype {x.dtype}")
    with enable_grad():
        if create_graph:  # a fresh view of each input, still on the caller's graph
            prepared = tuple(x.reshape(x.shape) if x.requires_grad else x.detach().requires_grad_() for x in xs)
        else:
            prepared = tuple(x.detach().requires_grad_() for x in xs)
    return prepared, single


def _check_like(name: str, what: str, vs: tuple[Tensor, ...], refs: tuple[Tensor, ...], ref_what: str) -> None:
    if len(vs) != len(refs):
        raise ValueError(f"{name}: got {len(vs)} tensors in {what}, expected {len(refs)} (one per {ref_what})")
    for k, (v, r) in enumerate(zip(vs, refs)):
        if v.shape != r.shape:
            raise ValueError(f"{name}: {what}[{k}] has shape {v.shape}, expected {r.shape} (the shape of {ref_what} {k})")


def _zeros_for_none(grads: tuple[Any, ...], like: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Gradients with None (no dependence) replaced by zeros, as PyTorch's functional API returns."""
    from minires.creation import zeros_like

    return tuple(zeros_like(x) if g is None else g for g, x in zip(grads, like))


def _finish(values: tuple[Tensor, ...], single: bool, create_graph: bool) -> Any:
    out = values if create_graph else tuple(v.detach() for v in values)
    return out[0] if single else out


def _call(name: str, func: Callable[..., Any], xs: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], bool]:
    with enable_grad():
        return _as_tuple(name, "func's output", func(*xs))


def vjp(func: Callable[..., Any], inputs: Any, v: Any = None, create_graph: bool = False) -> tuple[Any, Any]:
    """(func(inputs), v^T J): ``v`` is shaped like func's output (may be omitted for a one-element output)."""
    xs, single_in = _prepare_inputs("vjp", inputs, create_graph)
    outs, single_out = _call("vjp", func, xs)
    vs = None if v is None else _as_tuple("vjp", "v", v)[0]
    if vs is not None:
        _check_like("vjp", "v", vs, outs, "output")
    used = [k for k, o in enumerate(outs) if o.requires_grad]
    if used:
        grads = grad(
            [outs[k] for k in used], xs, None if vs is None else [vs[k] for k in used],
            create_graph=create_graph, allow_unused=True,
        )
    else:
        grads = (None,) * len(xs)
    return _finish(outs, single_out, create_graph), _finish(_zeros_for_none(grads, xs), single_in, create_graph)


def jvp(func: Callable[..., Any], inputs: Any, v: Any = None, create_graph: bool = False) -> tuple[Any, Any]:
    """(func(inputs), J v): ``v`` is shaped like the inputs (may be omitted for one-element inputs).

    Exact, by the double-vjp trick (module docstring): needs every op of ``func`` to have a
    differentiable backward, as ``create_graph=True`` does."""
    from minires.creation import ones_like, zeros_like

    xs, single_in = _prepare_inputs("jvp", inputs, create_graph)
    if v is None:
        if any(x.numel() != 1 for x in xs):
            raise ValueError("jvp: v can be omitted only when every input has one element")
        us: tuple[Tensor, ...] = tuple(ones_like(x) for x in xs)
    else:
        us = _as_tuple("jvp", "v", v)[0]
    _check_like("jvp", "v", us, xs, "input")
    outs, single_out = _call("jvp", func, xs)
    used = [k for k, o in enumerate(outs) if o.requires_grad]
    with enable_grad():
        dummies = [zeros_like(outs[k]).requires_grad_() for k in used]  # g(dummy) = J^T dummy, linear
    results: list[Tensor] = [zeros_like(o) for o in outs]
    if used:
        vjps = grad([outs[k] for k in used], xs, dummies, create_graph=True, allow_unused=True)
        pairs = [(g, u) for g, u in zip(vjps, us) if g is not None]
        if pairs:
            jus = grad(
                [g for g, _ in pairs], dummies, [u for _, u in pairs], create_graph=create_graph, allow_unused=True
            )
            for k, ju in zip(used, jus):
                if ju is not None:
                    results[k] = ju
    return _finish(outs, single_out, create_graph), _finish(tuple(results), single_out, create_graph)


def _scalar_output(name: str, func: Callable[..., Any], xs: tuple[Tensor, ...]) -> Tensor:
    outs, single = _call(name, func, xs)
    if not single or outs[0].numel() != 1:
        raise ValueError(f"{name}: func must return a single one-element Tensor, got shapes {[o.shape for o in outs]}")
    return outs[0]


def hvp(func: Callable[..., Any], inputs: Any, v: Any, create_graph: bool = False) -> tuple[Any, Any]:
    """(func(inputs), H v) for a scalar ``func``: the Hessian times ``v``, by differentiating the gradient."""
    xs, single = _prepare_inputs("hvp", inputs, create_graph)
    vs = _as_tuple("hvp", "v", v)[0]
    _check_like("hvp", "v", vs, xs, "input")
    out = _scalar_output("hvp", func, xs)
    hv: tuple[Tensor, ...] = _zeros_for_none((None,) * len(xs), xs)
    if out.requires_grad:
        grads = _zeros_for_none(grad(out, xs, create_graph=True, allow_unused=True), xs)
        pairs = [(g, u) for g, u in zip(grads, vs) if g.requires_grad]
        if pairs:
            found = grad([g for g, _ in pairs], xs, [u for _, u in pairs], create_graph=create_graph, allow_unused=True)
            hv = _zeros_for_none(found, xs)
    return _finish((out,), True, create_graph), _finish(hv, single, create_graph)


def vhp(func: Callable[..., Any], inputs: Any, v: Any, create_graph: bool = False) -> tuple[Any, Any]:
    """(func(inputs), v^T H); equal to ``hvp`` since the Hessian of a twice-differentiable function is symmetric."""
    return hvp(func, inputs, v, create_graph)


def hessian(func: Callable[..., Any], inputs: Any, create_graph: bool = False) -> Any:
    """The Hessian of a scalar ``func``, one Hessian-vector product per input element (small inputs).

    For one input x of shape S: a Tensor of shape S + S. For a tuple of inputs: a tuple of tuples,
    ``H[i][j]`` of shape ``inputs[i].shape + inputs[j].shape``, as PyTorch's."""
    from minires.creation import zeros_like
    from minires.ops.shape import stack

    xs, single = _prepare_inputs("hessian", inputs, create_graph)
    out = _scalar_output("hessian", func, xs)
    grads = (
        _zeros_for_none(grad(out, xs, create_graph=True, allow_unused=True), xs)
        if out.requires_grad
        else _zeros_for_none((None,) * len(xs), xs)
    )
    blocks: list[list[Tensor]] = [[] for _ in xs]
    for i, (gi, xi) in enumerate(zip(grads, xs)):
        # row e of block i: d grad_i[e] / d xs, one reverse pass per element of xs[i]
        rows: list[tuple[Tensor, ...]] = []
        for e in range(xi.numel()):
            if not gi.requires_grad:
                rows.append(_zeros_for_none((None,) * len(xs), xs))
                continue
            basis = zeros_like(gi).detach()
            basis.data.reshape(-1)[e] = 1
            found = grad(gi, xs, basis, retain_graph=True, create_graph=create_graph, allow_unused=True)
            rows.append(_zeros_for_none(found, xs))
        for j, xj in enumerate(xs):
            blocks[i].append(stack([r[j] for r in rows], dim=0).reshape(*xi.shape, *xj.shape))
    result = tuple(tuple(v if create_graph else v.detach() for v in row) for row in blocks)
    return result[0][0] if single else result


__all__ = ["hessian", "hvp", "jvp", "vhp", "vjp"]
