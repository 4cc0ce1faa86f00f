"""Reverse-mode autograd: the graph (``function``), the backward walk (``engine``), ``grad`` and,
in ``functional``, jvp / vjp / hvp / hessian."""

from minires.autograd.gradients import grad

__all__ = ["grad"]
