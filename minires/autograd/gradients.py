"""``mr.autograd.grad``: gradients of outputs with respect to chosen inputs, returned (not put in ``.grad``).

With ``create_graph=True`` the returned gradients carry a graph and can be differentiated again::

    x = mr.tensor([1.0, 2.0], dtype=mr.float64, requires_grad=True)
    y = (x ** 3).sum()
    (g,) = mr.autograd.grad(y, x, create_graph=True)   # 3 x^2, with a graph
    (h,) = mr.autograd.grad(g.sum(), x)                # 6 x
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from minires.autograd.engine import root_gradient, run_backward

if TYPE_CHECKING:
    from minires.tensor import Tensor


def _as_list(name: str, value: Any) -> list[Any]:
    from minires.tensor import Tensor

    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TypeError(f"grad: {name} must be a Tensor or a sequence of Tensors, got {type(value).__name__}")


def grad(
    outputs: Tensor | Sequence[Tensor],
    inputs: Tensor | Sequence[Tensor],
    grad_outputs: Any = None,
    retain_graph: bool | None = None,
    create_graph: bool = False,
    allow_unused: bool = False,
) -> tuple[Tensor | None, ...]:
    """The sum over ``outputs`` of their vector-Jacobian products with ``grad_outputs``, with respect
    to each of ``inputs`` (leaves or intermediate tensors), as PyTorch's ``torch.autograd.grad``.

    ``grad_outputs`` may be omitted (or None per output) for one-element outputs. No ``.grad`` is
    changed. ``retain_graph`` defaults to ``create_graph``. An input that no output depends on is an
    error unless ``allow_unused=True``, which gives None for it.
    """
    from minires.tensor import Tensor

    outs = _as_list("outputs", outputs)
    ins = _as_list("inputs", inputs)
    if not ins:
        raise ValueError("grad: inputs is empty; name at least one tensor to differentiate with respect to")
    for k, t in enumerate(outs + ins):
        if not isinstance(t, Tensor):
            raise TypeError(f"grad: expected Tensors, got {type(t).__name__} at position {k}")
    for k, t in enumerate(ins):
        if not t.requires_grad:
            raise RuntimeError(f"grad: input {k} (shape {t.shape}) does not require grad")
    gos = [None] * len(outs) if grad_outputs is None else _as_list("grad_outputs", grad_outputs)
    if len(gos) != len(outs):
        raise ValueError(f"grad: got {len(gos)} grad_outputs for {len(outs)} outputs")
    starts = [root_gradient("grad", o, g, create_graph) for o, g in zip(outs, gos)]
    keep = create_graph if retain_graph is None else retain_graph
    result = run_backward(outs, starts, retain_graph=keep, create_graph=create_graph, inputs=ins)
    assert result is not None
    grads: list[Tensor | None] = []
    for k, (t, g) in enumerate(zip(ins, result)):
        if g is None:
            if not allow_unused:
                raise RuntimeError(
                    f"grad: input {k} (shape {t.shape}) was not used to compute the outputs; "
                    "pass allow_unused=True to get None for it"
                )
            grads.append(None)
        else:
            grads.append(g if isinstance(g, Tensor) else Tensor._from_array(g))
    return tuple(grads)
