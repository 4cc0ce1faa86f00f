"""Gradient checking against central finite differences, in float64.

``gradcheck(fn, inputs)`` builds the whole Jacobian twice, once from backward (one vector-Jacobian
product per output element) and once numerically (one pair of perturbed forward passes per input
element), and compares them. ``fast_mode=True`` compares random directional derivatives instead
(u^T J v against a two-point difference along v), cheap enough for whole networks.

Kinks: a central difference of step ``eps`` that straddles a kink (ReLU at 0, a max-pool tie)
measures neither side's slope. Single ops are easy to keep away from kinks (``minires.testing``'s
``arrays_away_from`` / ``arrays_without_ties``); in fast mode on a whole network every ReLU input
moves at once, so use a smaller ``eps`` (1e-8 in float64) and inputs whose nearest kink is farther
than ``eps`` times the direction's size (the model tests measure that distance with hooks).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import numpy as np

from minires import backend
from minires.autograd.grad_mode import enable_grad, no_grad
from minires.tensor import Tensor


class GradcheckError(RuntimeError):
    """Analytic and numerical gradients disagree (the message says where and by how much)."""


def _outputs(fn: Callable[..., Any], inputs: Sequence[Any]) -> list[Tensor]:
    out = fn(*inputs)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if not all(isinstance(o, Tensor) for o in outs):
        raise TypeError("gradcheck: fn must return a Tensor or a tuple of Tensors")
    return outs


def _flat_outputs(fn: Callable[..., Any], inputs: Sequence[Any]) -> np.ndarray:
    with no_grad():
        outs = _outputs(fn, inputs)
    diff = [o for o in outs if o.dtype.kind in "fc"]
    return np.concatenate([backend.to_numpy(o.data).astype(np.float64).ravel() for o in diff])


def _graph_leaves(root: Tensor) -> list[Tensor]:
    """The leaf tensors whose .grad a backward from ``root`` would accumulate into."""
    from minires.autograd.engine import topological_order
    from minires.autograd.function import LeafEdge

    if root.grad_fn is None:
        return [root]
    return [edge.tensor for node in topological_order(root.grad_fn) for edge in node.edges if type(edge) is LeafEdge]


def _vjp(fn: Callable[..., Any], inputs: Sequence[Any], targets: list[Tensor], cotangent: np.ndarray) -> list[np.ndarray]:
    """Gradient of <cotangent, flat outputs> for each target input, via backward."""
    for t in targets:
        t.grad = None
    with enable_grad():
        outs = [o for o in _outputs(fn, inputs) if o.dtype.kind in "fc"]
        total = None
        offset = 0
        for o in outs:
            n = o.numel()
            if o.requires_grad:
                v = cotangent[offset : offset + n].reshape(o.shape)
                v_dev = backend.to_device(v.astype(o.dtype), o.device)
                term = (o * Tensor._from_array(v_dev)).sum()
                total = term if total is None else total + term
            offset += n
        if total is not None:
            # Only the targets' gradients are wanted: leaves that fn reaches otherwise (a module's
            # parameters) get their .grad back as it was, as torch.autograd.gradcheck leaves them.
            others = {id(t): t for t in _graph_leaves(total) if not any(t is u for u in targets)}
            kept = {key: t.grad for key, t in others.items()}
            total.backward()
            for key, t in others.items():
                t._grad = kept[key]
    grads = []
    for t in targets:
        grads.append(np.zeros(t.shape) if t.grad is None else backend.to_numpy(t.grad.data).astype(np.float64))
        t.grad = None
    return grads


def _numerical_column(fn: Callable[..., Any], inputs: Sequence[Any], t: Tensor, flat_index: int, eps: float) -> np.ndarray:
    flat = t.data.reshape(-1)
    original = flat[flat_index].item()
    flat[flat_index] = original + eps
    plus = _flat_outputs(fn, inputs)
    flat[flat_index] = original - eps
    minus = _flat_outputs(fn, inputs)
    flat[flat_index] = original
    return (plus - minus) / (2 * eps)


def _prepare(inputs: Sequence[Any]) -> tuple[list[Any], list[int]]:
    inputs = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
    targets = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not targets:
        raise ValueError("gradcheck: no input requires grad, so there is nothing to check")
    low = [i for i in targets if inputs[i].dtype != np.float64]
    if low:
        warnings.warn(
            f"gradcheck: inputs {low} are {inputs[low[0]].dtype}, not float64; finite differences "
            "will be inaccurate. Check in float64 (x.double()).",
            stacklevel=3,
        )
    for i in targets:
        if not inputs[i].is_leaf:
            raise ValueError(f"gradcheck: input {i} is not a leaf tensor; pass leaves (x.detach().requires_grad_())")
        if not inputs[i].data.flags.c_contiguous:  # perturbation writes through a flat view
            inputs[i].data = inputs[i].data.copy()
    return inputs, targets


def _fail(what: str, i: int, t: Tensor, analytic: np.ndarray, numerical: np.ndarray, atol: float, rtol: float) -> None:
    err = np.abs(analytic - numerical) - (atol + rtol * np.abs(numerical))
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    element = tuple(int(w) for w in np.unravel_index(int(worst[1]), t.shape))  # the input element, in its own shape
    raise GradcheckError(
        f"gradcheck: {what} for input {i} (shape {t.shape}) disagrees with finite differences; worst at "
        f"{tuple(int(w) for w in worst)} (output element {int(worst[0])} of the flattened outputs, input element "
        f"{element}): analytic {analytic[worst]:.6g} vs numerical {numerical[worst]:.6g} "
        f"(|diff| {abs(analytic[worst] - numerical[worst]):.3g} > atol {atol:g} + rtol {rtol:g} * |numerical|)"
    )


def gradcheck(
    fn: Callable[..., Any],
    inputs: Sequence[Any] | Tensor,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    fast_mode: bool = False,
    n_directions: int = 3,
    seed: int = 0,
    raise_exception: bool = True,
) -> bool:
    """Check ``fn``'s backward against central differences for every input that requires grad.

    Returns True, or raises :class:`GradcheckError` naming the input, the worst element, the
    analytic and numerical values and the tolerance (returns False instead when
    ``raise_exception=False``). Also checks that a zero output gradient gives zero input gradients.

    The inputs are perturbed in place and restored; an input whose ``.data`` is not C-contiguous
    gets a contiguous copy as its ``.data`` first (same values; it no longer shares memory with
    the array it viewed). The ``.grad`` of every checked input is left as None.
    """
    try:
        inputs, targets = _prepare(inputs)
        tensors = [inputs[i] for i in targets]
        base = _flat_outputs(fn, inputs)
        m = base.size
        zero = _vjp(fn, inputs, tensors, np.zeros(m))
        for i, g in zip(targets, zero):
            if np.any(g != 0):
                raise GradcheckError(f"gradcheck: a zero output gradient gave a nonzero gradient for input {i}")
        if fast_mode:
            _check_directional(fn, inputs, targets, m, eps, atol, rtol, n_directions, seed)
        else:
            _check_full(fn, inputs, targets, m, eps, atol, rtol)
    except GradcheckError:
        if raise_exception:
            raise
        return False
    return True


def _check_full(fn: Callable[..., Any], inputs: list[Any], targets: list[int], m: int, eps: float, atol: float, rtol: float) -> None:
    tensors = [inputs[i] for i in targets]
    analytic = [np.zeros((m, t.numel())) for t in tensors]
    for row in range(m):
        e = np.zeros(m)
        e[row] = 1.0
        for k, g in enumerate(_vjp(fn, inputs, tensors, e)):
            analytic[k][row] = g.ravel()
    for k, (i, t) in enumerate(zip(targets, tensors)):
        numerical = np.zeros((m, t.numel()))
        for col in range(t.numel()):
            numerical[:, col] = _numerical_column(fn, inputs, t, col, eps)
        if not np.allclose(analytic[k], numerical, atol=atol, rtol=rtol):
            _fail("the Jacobian (rows: outputs, columns: input elements)", i, t, analytic[k], numerical, atol, rtol)


def _check_directional(
    fn: Callable[..., Any], inputs: list[Any], targets: list[int], m: int, eps: float, atol: float, rtol: float, n: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    tensors = [inputs[i] for i in targets]
    for _ in range(n):
        u = rng.standard_normal(m)
        grads = _vjp(fn, inputs, tensors, u)
        directions = [rng.standard_normal(t.shape) for t in tensors]
        analytic = sum(float((g * d).sum()) for g, d in zip(grads, directions))
        originals = [t.data.copy() for t in tensors]
        for t, d in zip(tensors, directions):
            t.data += backend.to_device(d.astype(t.dtype), t.device) * eps
        plus = _flat_outputs(fn, inputs)
        for t, o, d in zip(tensors, originals, directions):
            t.data[...] = o - backend.to_device(d.astype(t.dtype), t.device) * eps
        minus = _flat_outputs(fn, inputs)
        for t, o in zip(tensors, originals):
            t.data[...] = o
        numerical = float(u @ (plus - minus)) / (2 * eps)
        if not abs(analytic - numerical) <= atol + rtol * abs(numerical):
            raise GradcheckError(
                f"gradcheck (fast mode): directional derivative over inputs {targets} disagrees: analytic "
                f"{analytic:.8g} vs numerical {numerical:.8g} (|diff| {abs(analytic - numerical):.3g} > atol {atol:g} "
                f"+ rtol {rtol:g} * |numerical|)"
            )
