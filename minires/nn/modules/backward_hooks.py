"""``Module.register_full_backward_hook``: call ``hook(module, grad_input, grad_output)`` when the
gradients with respect to a module's tensor inputs have been computed, as PyTorch does.

How: when a module has such hooks, its call wraps the tensor inputs in one identity node and the
tensor outputs in another. Backward reaches the output node first and remembers ``grad_output``;
the input node runs once every gradient for the inputs has been summed, and calls the hooks there. A
hook may return a tuple that replaces ``grad_input``. (If no input requires grad, the hooks run at
the output node with ``grad_input`` all None, as PyTorch's.)
"""

from __future__ import annotations

from typing import Any, Callable

from minires.autograd.function import Context, Function
from minires.autograd.grad_mode import is_grad_enabled
from minires.tensor import Tensor


class _HookCall:
    """What the two identity nodes of one module call share."""

    def __init__(self, module: Any, hooks: list[Callable[..., Any]], input_slots: list[bool]) -> None:
        self.module = module
        self.hooks = list(hooks)
        self.input_slots = input_slots  # per tensor argument: True when it was wrapped (requires grad)
        self.grad_output: tuple[Any, ...] = ()

    def run(self, grad_input: tuple[Any, ...]) -> tuple[Any, ...]:
        wrap = tuple(None if g is None else Tensor._from_array(g) for g in grad_input)
        outputs = tuple(Tensor._from_array(g) for g in self.grad_output)
        for hook in self.hooks:
            result = hook(self.module, wrap, outputs)
            if result is None:
                continue
            result = tuple(result) if isinstance(result, (tuple, list)) else (result,)
            if len(result) != len(wrap):
                raise RuntimeError(
                    f"backward hook {getattr(hook, '__qualname__', hook)!r} of {type(self.module).__name__} returned "
                    f"{len(result)} gradients, expected {len(wrap)} (one per tensor input)"
                )
            for new, old in zip(result, wrap):
                if new is not None and old is not None and tuple(new.shape) != tuple(old.shape):
                    raise RuntimeError(
                        f"backward hook {getattr(hook, '__qualname__', hook)!r} of {type(self.module).__name__} returned "
                        f"a gradient of shape {tuple(new.shape)} for an input of shape {tuple(old.shape)}"
                    )
            wrap = result
        return tuple(None if g is None else (g.data if isinstance(g, Tensor) else g) for g in wrap)


class _Identity(Function):
    """Passes its tensors through unchanged; the subclasses' backward is where the hooks act."""

    @staticmethod
    def forward(ctx: Context, call: _HookCall, *xs: Any) -> Any:
        ctx.call = call
        return tuple(xs)


class _InputsIdentity(_Identity):
    @staticmethod
    def backward(ctx: Context, *grads: Any) -> tuple[Any, ...]:
        call: _HookCall = ctx.call
        it = iter(grads)
        full = tuple(next(it) if wrapped else None for wrapped in call.input_slots)
        replaced = call.run(full)
        return (None, *(g for g, wrapped in zip(replaced, call.input_slots) if wrapped))


class _OutputsIdentity(_Identity):
    @staticmethod
    def backward(ctx: Context, *grads: Any) -> tuple[Any, ...]:
        call: _HookCall = ctx.call
        call.grad_output = grads
        if not any(call.input_slots):
            call.run(tuple(None for _ in call.input_slots))
        return (None, *grads)


def call_with_backward_hooks(module: Any, hooks: list[Callable[..., Any]], forward: Callable[..., Any],
                             args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``forward(*args, **kwargs)`` with the inputs and outputs wrapped for the full backward hooks."""
    if not is_grad_enabled():
        return forward(*args, **kwargs)
    tensor_positions = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
    slots = [args[i].requires_grad for i in tensor_positions]
    call = _HookCall(module, hooks, slots)
    wrapped_positions = [i for i, s in zip(tensor_positions, slots) if s]
    args = list(args)
    if wrapped_positions:
        new = _InputsIdentity.apply(call, *(args[i] for i in wrapped_positions))
        for i, t in zip(wrapped_positions, new):
            args[i] = t
    output = forward(*args, **kwargs)
    outs = output if isinstance(output, tuple) else (output,)
    positions = [i for i, o in enumerate(outs) if isinstance(o, Tensor) and o.requires_grad]
    if not positions:
        return output
    new_outs = list(outs)
    for i, t in zip(positions, _OutputsIdentity.apply(call, *(outs[i] for i in positions))):
        new_outs[i] = t
    return tuple(new_outs) if isinstance(output, tuple) else new_outs[0]
