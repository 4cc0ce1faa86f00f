"""``check_grads(f, args, order, modes)``: JAX's check, on minires — forward- and reverse-mode
derivatives up to ``order`` against central differences.

- "fwd": ``jvp(f, args, u)`` must equal ``(f(args + eps u) - f(args - eps u)) / (2 eps)`` along a
  random tangent ``u``;
- "rev": the vjp must be the transpose of that: ``<u, J^T v> = <J u, v>`` for random ``u`` and
  cotangent ``v``, with ``J u`` measured by central differences.

For ``order=2`` the same checks run again on the derivative functions themselves: on
``(args, tangents) -> (f(args), J tangents)`` for "fwd", and on ``args -> J^T f(args)`` for "rev"
(as JAX does), so a wrong backward-of-backward fails. Check in float64, away from kinks.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from minires import backend
from minires.autograd import functional
from minires.autograd.grad_mode import no_grad
from minires.gradcheck import GradcheckError, _outputs
from minires.tensor import Tensor

Tol = tuple[float, float, float]  # (atol, rtol, eps)


def _values(f: Callable[..., Any], args: Sequence[Tensor]) -> list[np.ndarray]:
    with no_grad():
        return [backend.to_numpy(o.data).astype(np.float64) for o in _outputs(f, args)]


def _like(rng: np.random.Generator, t: Tensor) -> Tensor:
    return Tensor._from_array(backend.to_device(rng.standard_normal(t.shape).astype(t.dtype), t.device))


def _shifted(args: Sequence[Tensor], tangents: Sequence[Tensor], step: float) -> list[Tensor]:
    return [Tensor._from_array(a.data + step * u.data) for a, u in zip(args, tangents)]


def _numerical_jvp(f: Callable[..., Any], args: Sequence[Tensor], tangents: Sequence[Tensor], eps: float) -> list[np.ndarray]:
    plus = _values(f, _shifted(args, tangents, eps))
    minus = _values(f, _shifted(args, tangents, -eps))
    return [(p - m) / (2 * eps) for p, m in zip(plus, minus)]


def _close(what: str, got: Any, expected: Any, atol: float, rtol: float) -> None:
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if not np.allclose(got, expected, atol=atol, rtol=rtol):
        err = np.abs(got - expected)
        worst = int(np.argmax(err - rtol * np.abs(expected)))
        raise GradcheckError(
            f"check_grads: {what}: worst element {worst} of {got.size}: got {got.ravel()[worst]:.8g}, expected "
            f"{expected.ravel()[worst]:.8g} (|diff| {err.ravel()[worst]:.3g} > atol {atol:g} + rtol {rtol:g} * |expected|)"
        )


def _as_list(x: Any) -> list[Tensor]:
    return list(x) if isinstance(x, (tuple, list)) else [x]


def _check_jvp(f: Callable[..., Any], args: list[Tensor], rng: np.random.Generator, tol: Tol, where: str) -> None:
    atol, rtol, eps = tol
    tangents = [_like(rng, a) for a in args]
    out, tangent_out = functional.jvp(f, tuple(args), tuple(tangents))
    for k, (o, e) in enumerate(zip(_as_list(out), _values(f, args))):
        _close(f"{where}forward value {k}", backend.to_numpy(o.data), e, atol, rtol)
    expected = _numerical_jvp(f, args, tangents, eps)
    for k, (t, e) in enumerate(zip(_as_list(tangent_out), expected)):
        _close(f"{where}jvp (output {k}) vs central differences along a random tangent", backend.to_numpy(t.data), e, atol, rtol)


def _check_vjp(f: Callable[..., Any], args: list[Tensor], rng: np.random.Generator, tol: Tol, where: str) -> None:
    atol, rtol, eps = tol
    with no_grad():
        outs = _outputs(f, args)
    tangents = [_like(rng, a) for a in args]
    cotangents = [_like(rng, o) for o in outs]
    _, cotangent_out = functional.vjp(f, tuple(args), tuple(cotangents))
    ip = sum(float((backend.to_numpy(u.data) * backend.to_numpy(c.data)).sum()) for u, c in zip(tangents, _as_list(cotangent_out)))
    tangent_out = _numerical_jvp(f, args, tangents, eps)
    ip_expected = sum(float((t * backend.to_numpy(v.data)).sum()) for t, v in zip(tangent_out, cotangents))
    _close(f"{where}<u, J^T v> (vjp) vs <J u, v> (central differences)", ip, ip_expected, atol, rtol)


def _jvp_function(f: Callable[..., Any], n: int) -> Callable[..., tuple[Tensor, ...]]:
    """(*primals, *tangents) -> (*f(primals), *J tangents), differentiable (create_graph)."""

    def f_jvp(*args: Tensor) -> tuple[Tensor, ...]:
        out, tangent_out = functional.jvp(f, tuple(args[:n]), tuple(args[n:]), create_graph=True)
        return (*_as_list(out), *_as_list(tangent_out))

    return f_jvp


def _vjp_function(f: Callable[..., Any]) -> Callable[..., tuple[Tensor, ...]]:
    """args -> J^T f(args): the vjp with the output itself as cotangent, differentiable (create_graph)."""

    def f_vjp(*args: Tensor) -> tuple[Tensor, ...]:
        outs = _outputs(f, args)
        _, cotangent_out = functional.vjp(f, tuple(args), tuple(outs), create_graph=True)
        return tuple(_as_list(cotangent_out))

    return f_vjp


def check_grads(
    f: Callable[..., Any],
    args: Sequence[Tensor] | Tensor,
    order: int,
    modes: Sequence[str] = ("fwd", "rev"),
    atol: float = 1e-5,
    rtol: float = 1e-3,
    eps: float = 1e-6,
    seed: int = 0,
) -> None:
    """Check ``f``'s derivatives up to ``order`` (1 or 2) in the given ``modes`` ("fwd", "rev");
    returns None, or raises :class:`minires.GradcheckError` saying which check and where.

    ``args`` are floating-point Tensors (float64 for meaningful tolerances); ``f`` returns a
    Tensor or a tuple of Tensors. Example::

        check_grads(lambda x, w: F.conv2d(x, w).tanh(), (x, w), order=2)
    """
    if order not in (1, 2) and not (isinstance(order, int) and order > 2):
        raise ValueError(f"check_grads: order must be a positive int, got {order!r}")
    bad = [m for m in modes if m not in ("fwd", "rev")]
    if bad or not modes:
        raise ValueError(f"check_grads: modes must be a non-empty subset of ('fwd', 'rev'), got {tuple(modes)!r}")
    arg_list = _as_list(args)
    for k, a in enumerate(arg_list):
        if not isinstance(a, Tensor) or a.dtype.kind != "f":
            raise TypeError(f"check_grads: argument {k} must be a floating-point Tensor")
    rng = np.random.default_rng(seed)
    tol = (atol, rtol, eps)

    def check(fn: Callable[..., Any], fn_args: list[Tensor], level: int, where: str) -> None:
        if "fwd" in modes:
            _check_jvp(fn, fn_args, rng, tol, where)
            if level > 1:
                tangents = [Tensor._from_array(a.data.copy()) for a in fn_args]  # JAX checks at (args, args)
                check(_jvp_function(fn, len(fn_args)), fn_args + tangents, level - 1, where + "jvp of f: ")
        if "rev" in modes:
            _check_vjp(fn, fn_args, rng, tol, where)
            if level > 1:
                check(_vjp_function(fn), fn_args, level - 1, where + "vjp of f: ")

    check(f, [a.detach() for a in arg_list], order, "")
