"""Second-order gradient checking: is the backward of the backward right?

``gradgradcheck(fn, inputs)`` runs :func:`minires.gradcheck` on the function that maps
``(inputs, grad_outputs)`` to the first-order gradients ``autograd.grad(fn(inputs), inputs,
grad_outputs, create_graph=True)``. That checks every op's differentiable backward (the graph
``create_graph=True`` records) against finite differences of the first-order gradient, with
respect to the inputs (the Hessian-vector part) and to ``grad_outputs`` (the backward is linear
in them). As PyTorch's ``gradgradcheck`` and Chainer's ``check_double_backward``; ``fast_mode``
compares random directional derivatives instead of whole Jacobians, as in ``gradcheck``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from minires import backend
from minires.autograd.grad_mode import enable_grad, no_grad
from minires.autograd.gradients import grad
from minires.gradcheck import _outputs, _prepare, gradcheck
from minires.tensor import Tensor


def gradgradcheck(
    fn: Callable[..., Any],
    inputs: Sequence[Any] | Tensor,
    grad_outputs: Sequence[Tensor] | None = None,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    fast_mode: bool = False,
    n_directions: int = 3,
    seed: int = 0,
    raise_exception: bool = True,
) -> bool:
    """Check the gradients of ``fn``'s gradients against central differences, in float64.

    ``grad_outputs`` (one per floating-point output of ``fn``) default to random float64 tensors
    that require grad, so the check covers both the inputs and the output gradients. Returns True,
    or raises :class:`minires.GradcheckError` (False with ``raise_exception=False``); the message
    names the input of the first-order gradient function that disagrees (the inputs first, then
    the ``grad_outputs``).
    """
    inputs, targets = _prepare(inputs)
    with no_grad():
        outs = [o for o in _outputs(fn, inputs) if o.dtype.kind in "fc"]
    if grad_outputs is None:
        rng = np.random.default_rng(seed)
        grad_outputs = [
            Tensor(backend.to_device(rng.standard_normal(o.shape).astype(o.dtype), o.device), requires_grad=True)
            for o in outs
        ]
    grad_outputs = list(grad_outputs)
    if len(grad_outputs) != len(outs):
        raise ValueError(f"gradgradcheck: got {len(grad_outputs)} grad_outputs for {len(outs)} floating-point outputs")
    n = len(inputs)

    def first_order_gradients(*args: Any) -> tuple[Tensor, ...]:
        xs, gos = args[:n], args[n:]
        with enable_grad():
            ys = [o for o in _outputs(fn, xs) if o.dtype.kind in "fc"]
            used = [k for k, y in enumerate(ys) if y.requires_grad]
            if not used:
                raise ValueError("gradgradcheck: no output of fn requires grad")
            grads = grad(
                [ys[k] for k in used], [xs[i] for i in targets], [gos[k] for k in used],
                create_graph=True, allow_unused=True,
            )
        return tuple(
            g if g is not None else Tensor._from_array(backend.xp_of(xs[i].data).zeros(xs[i].shape, xs[i].dtype))
            for i, g in zip(targets, grads)
        )

    return gradcheck(
        first_order_gradients, [*inputs, *grad_outputs], eps=eps, atol=atol, rtol=rtol,
        fast_mode=fast_mode, n_directions=n_directions, seed=seed, raise_exception=raise_exception,
    )
