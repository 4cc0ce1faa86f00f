"""``Module``: the base class of layers and models (PyTorch's ``nn.Module`` semantics).

A Module owns parameters, buffers and submodules, registered by attribute assignment
(``self.conv = Conv2d(...)``, ``self.weight = Parameter(...)``) or explicitly with
``register_parameter`` / ``register_buffer`` / ``add_module``. Registration order is the order of
``named_parameters()`` and of ``state_dict()`` keys: a module's own parameters, then its own
buffers, then each child's entries, recursively, as PyTorch does, so checkpoints map one to one.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Iterator, Mapping, TypeVar

import numpy as np

from minires import backend
from minires.nn.modules.backward_hooks import call_with_backward_hooks
from minires.nn.modules.state_dict import IncompatibleKeys, load_into
from minires.nn.parameter import Parameter
from minires.tensor import RemovableHandle, Tensor

T = TypeVar("T", bound="Module")


def _check_name(kind: str, name: Any) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{kind} name should be a string, got {type(name).__name__}")
    if name == "":
        raise KeyError(f'{kind} name can\'t be empty string ""')
    if "." in name:
        raise KeyError(f'{kind} name can\'t contain ".", got: {name}')


def _addindent(text: str, spaces: int) -> str:
    """Indent every line but the first (for nested reprs)."""
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    return lines[0] + "\n" + "\n".join(" " * spaces + line for line in lines[1:])


def _to_dtype_and_device(device: Any, dtype: Any) -> tuple[str | None, np.dtype | None]:
    """Sort ``to``'s arguments: ``to("cuda")``, ``to(mr.float64)``, ``to(tensor)``, or both by name."""
    if isinstance(device, Tensor):
        device, dtype = device.device, device.dtype if dtype is None else dtype
    elif isinstance(device, (np.dtype, type)) and dtype is None:
        device, dtype = None, device
    target_device = None if device is None else backend.parse_device(device)
    target_dtype = None if dtype is None else np.dtype(dtype)
    if target_dtype is not None and target_dtype.kind not in "fc":
        raise TypeError(f"Module.to only accepts floating point dtypes, but got desired dtype={target_dtype}")
    return target_device, target_dtype


class Module:
    """Base class for all layers and models. Subclasses set state in ``__init__`` and define ``forward``."""

    training: bool
    # Entries a checkpoint may lack without counting as missing (they keep their value), like
    # BatchNorm's num_batches_tracked, absent from checkpoints older than PyTorch 0.4.1.
    _optional_on_load: tuple[str, ...] = ()
    _parameters: OrderedDict[str, Parameter | None]
    _buffers: OrderedDict[str, Tensor | None]
    _non_persistent_buffers_set: set[str]
    _modules: OrderedDict[str, Module | None]
    _forward_hooks: list[Callable[..., Any]]
    _forward_pre_hooks: list[Callable[..., Any]]
    _backward_hooks: list[Callable[..., Any]]

    def __init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "training", True)
        set_(self, "_parameters", OrderedDict())
        set_(self, "_buffers", OrderedDict())
        set_(self, "_non_persistent_buffers_set", set())
        set_(self, "_modules", OrderedDict())
        set_(self, "_forward_hooks", [])
        set_(self, "_forward_pre_hooks", [])
        set_(self, "_backward_hooks", [])

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f'Module [{type(self).__name__}] is missing the required "forward" function')

    # ----- registration -----------------------------------------------------------------------
    def _require_init(self, what: str) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {what} before Module.__init__() call")

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Add a parameter (or a ``None`` placeholder, e.g. ``bias`` when ``bias=False``)."""
        self._require_init("parameter")
        _check_name("parameter", name)
        if hasattr(self, name) and name not in self._parameters:
            raise KeyError(f"attribute '{name}' already exists")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(
                f"cannot assign '{type(param).__name__}' object to parameter '{name}' "
                "(nn.Parameter or None required)"
            )
        if param is not None and param.grad_fn is not None:
            raise ValueError(
                f"Cannot assign non-leaf Tensor to parameter '{name}'. Model parameters must be created "
                "explicitly: wrap the tensor's data in nn.Parameter(t.detach())."
            )
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """Add state that is not trained (running statistics); ``persistent=False`` keeps it out of state_dict."""
        self._require_init("buffer")
        _check_name("buffer", name)
        if hasattr(self, name) and name not in self._buffers:
            raise KeyError(f"attribute '{name}' already exists")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"cannot assign '{type(tensor).__name__}' object to buffer '{name}' (Tensor or None required)")
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers_set.discard(name)
        else:
            self._non_persistent_buffers_set.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        """Add a child module, reachable as ``self.<name>``."""
        self._require_init("module")
        _check_name("module", name)
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        if hasattr(self, name) and name not in self._modules:
            raise KeyError(f"attribute '{name}' already exists")
        self._modules[name] = module

    register_module = add_module

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        params = d.get("_parameters")
        if isinstance(value, Parameter):
            self._require_init("parameters")
            self._forget(name, keep="_parameters")
            self.register_parameter(name, value)
        elif params is not None and name in params:
            if value is not None:
                raise TypeError(
                    f"cannot assign '{type(value).__name__}' as parameter '{name}' (nn.Parameter or None expected)"
                )
            params[name] = None
        elif isinstance(value, Module):
            self._require_init("module")
            self._forget(name, keep="_modules")
            self._modules[name] = value
        elif d.get("_modules") is not None and name in d["_modules"]:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as child module '{name}' (Module or None expected)")
            d["_modules"][name] = None
        elif d.get("_buffers") is not None and name in d["_buffers"]:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign '{type(value).__name__}' as buffer '{name}' (Tensor or None expected)")
            d["_buffers"][name] = value
        else:
            object.__setattr__(self, name, value)

    def _forget(self, name: str, keep: str) -> None:
        """Drop ``name`` from every registry but ``keep`` (and from plain attributes)."""
        self.__dict__.pop(name, None)
        for registry in ("_parameters", "_buffers", "_modules"):
            if registry != keep:
                self.__dict__[registry].pop(name, None)
        self._non_persistent_buffers_set.discard(name)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__  # never self._x here: __getattr__ runs on half-built objects (copy, pickle)
        for registry in ("_parameters", "_buffers", "_modules"):
            members = d.get(registry)
            if members is not None and name in members:
                return members[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        for registry in ("_parameters", "_buffers", "_modules"):
            members = self.__dict__.get(registry)
            if members is not None and name in members:
                del members[name]
                self._non_persistent_buffers_set.discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self) -> list[str]:
        keys = list(super().__dir__()) + list(self._parameters) + list(self._buffers) + list(self._modules)
        return sorted(set(keys))

    # ----- traversal --------------------------------------------------------------------------
    def named_modules(
        self, memo: set[int] | None = None, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Module]]:
        """Every module in the tree, this one first (name ""), depth first, each shared module once."""
        if memo is None:
            memo = set()
        if id(self) in memo:
            return
        if remove_duplicate:
            memo.add(id(self))
        yield prefix, self
        for name, module in self._modules.items():
            if module is not None:
                yield from module.named_modules(memo, f"{prefix}.{name}" if prefix else name, remove_duplicate)

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_children(self) -> Iterator[tuple[str, Module]]:
        seen: set[int] = set()
        for name, module in self._modules.items():
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                yield name, module

    def children(self) -> Iterator[Module]:
        for _, module in self.named_children():
            yield module

    def _named_members(
        self, registry: str, prefix: str, recurse: bool, remove_duplicate: bool
    ) -> Iterator[tuple[str, Any]]:
        seen: set[int] = set()
        modules = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        for module_prefix, module in modules:
            for name, value in getattr(module, registry).items():
                if value is None or id(value) in seen:
                    continue
                if remove_duplicate:
                    seen.add(id(value))
                yield (f"{module_prefix}.{name}" if module_prefix else name), value

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, parameter) pairs in registration order; a shared parameter appears once."""
        yield from self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Tensor]]:
        yield from self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, buf in self.named_buffers(recurse=recurse):
            yield buf

    def get_submodule(self, target: str) -> Module:
        """The module at a dotted path (``"layer1.0.conv1"``); ``""`` is this module."""
        module: Module = self
        for part in target.split(".") if target else []:
            child = module._modules.get(part)
            if child is None:
                raise AttributeError(f"{type(module).__name__} has no submodule `{part}` (looking up '{target}')")
            module = child
        return module

    # ----- modes and gradients ----------------------------------------------------------------
    def train(self: T, mode: bool = True) -> T:
        """Set training mode here and in every submodule (BatchNorm and Dropout behave differently)."""
        if not isinstance(mode, bool):
            raise ValueError(f"training mode is expected to be boolean, got {mode!r}")
        object.__setattr__(self, "training", mode)
        for module in self.children():
            module.train(mode)
        return self

    def eval(self: T) -> T:
        """Evaluation mode: same as ``train(False)``."""
        return self.train(False)

    def requires_grad_(self: T, requires_grad: bool = True) -> T:
        """Switch gradient tracking of every parameter (freeze with ``requires_grad_(False)``)."""
        for param in self.parameters():
            param.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's ``.grad``: drop it (default) or zero it in place (same Tensor, as PyTorch)."""
        for param in self.parameters():
            if param.grad is None:
                continue
            if set_to_none:
                param.grad = None
            else:
                param.grad.data[...] = 0

    def apply(self: T, fn: Callable[[Module], Any]) -> T:
        """Call ``fn`` on every submodule (children first), then on this module; for custom init."""
        for module in self.children():
            module.apply(fn)
        fn(self)
        return self

    # ----- device and dtype -------------------------------------------------------------------
    def _apply(self: T, fn: Callable[[Any], Any]) -> T:
        """Replace the array of every parameter, gradient and buffer by ``fn(array)``, in place.

        The Parameter and buffer objects stay the same (only ``.data`` changes), so an optimizer
        built before ``to()`` keeps pointing at the model's parameters.
        """
        seen: set[int] = set()
        for module in self.modules():
            for tensor in list(module._parameters.values()) + list(module._buffers.values()):
                if tensor is None or id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                tensor.data = fn(tensor.data)
                if tensor.grad is not None:
                    tensor.grad.data = fn(tensor.grad.data)
        return self

    def to(self: T, device: Any = None, dtype: Any = None) -> T:
        """Move parameters and buffers to ``device`` and cast floating ones to ``dtype``, in place.

        ``to("cuda")``, ``to(mr.float64)``, ``to(device, dtype)`` or ``to(tensor)``. Integer buffers
        (``num_batches_tracked``) keep their dtype. Returns self.
        """
        target_device, target_dtype = _to_dtype_and_device(device, dtype)

        def convert(array: Any) -> Any:
            if target_device is not None:
                array = backend.to_device(array, target_device)
            if target_dtype is not None and array.dtype.kind in "fc":
                array = array.astype(target_dtype, copy=False)
            return array

        return self._apply(convert)

    def cuda(self: T, device: Any = None) -> T:
        return self.to("cuda" if device is None else device)

    def cpu(self: T) -> T:
        return self.to("cpu")

    def float(self: T) -> T:
        return self.to(dtype=np.float32)

    def double(self: T) -> T:
        return self.to(dtype=np.float64)

    def half(self: T) -> T:
        return self.to(dtype=np.float16)

    # ----- calling and hooks ------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for hook in list(self._forward_pre_hooks):
            result = hook(self, args)
            if result is not None:
                args = result if isinstance(result, tuple) else (result,)
        if self.__dict__.get("_backward_hooks"):
            output = call_with_backward_hooks(self, self._backward_hooks, self.forward, args, kwargs)
        else:
            output = self.forward(*args, **kwargs)
        for hook in list(self._forward_hooks):
            result = hook(self, args, output)
            if result is not None:
                output = result
        return output

    def register_forward_pre_hook(self, hook: Callable[..., Any], *, prepend: bool = False) -> RemovableHandle:
        """Call ``hook(module, args)`` before ``forward``; a non-None result replaces ``args``."""
        return self._add_hook(self._forward_pre_hooks, hook, prepend)

    def register_forward_hook(self, hook: Callable[..., Any], *, prepend: bool = False) -> RemovableHandle:
        """Call ``hook(module, args, output)`` after ``forward``; a non-None result replaces the output.

        The output is a live graph tensor, so the hook can ``output.register_hook(...)`` to watch the
        gradient flowing back through this module.
        """
        return self._add_hook(self._forward_hooks, hook, prepend)

    def register_full_backward_hook(self, hook: Callable[..., Any], *, prepend: bool = False) -> RemovableHandle:
        """Call ``hook(module, grad_input, grad_output)`` once the gradients with respect to this module's
        tensor inputs are computed (tuples of Tensors, None for inputs that need none); a returned tuple
        replaces ``grad_input``. See :mod:`minires.nn.modules.backward_hooks`."""
        return self._add_hook(self._backward_hooks, hook, prepend)

    @staticmethod
    def _add_hook(hooks: list[Callable[..., Any]], hook: Callable[..., Any], prepend: bool) -> RemovableHandle:
        """Add ``hook`` (first if ``prepend``); the handle is the same kind ``Tensor.register_hook`` returns."""
        hooks.insert(0 if prepend else len(hooks), hook)
        return RemovableHandle(hooks, hook)

    # ----- state dict -------------------------------------------------------------------------
    def _local_state(self) -> Iterator[tuple[str, Tensor]]:
        """This module's own entries of the state dict: parameters, then persistent buffers."""
        for name, param in self._parameters.items():
            if param is not None:
                yield name, param
        for name, buf in self._buffers.items():
            if buf is not None and name not in self._non_persistent_buffers_set:
                yield name, buf

    def _state_entries(self, prefix: str = "") -> Iterator[tuple[str, Tensor, bool]]:
        """Every (key, live tensor, may be missing from a checkpoint) of the state dict, in PyTorch's order."""
        for name, tensor in self._local_state():
            yield prefix + name, tensor, name in self._optional_on_load
        for name, module in self._modules.items():
            if module is not None:
                yield from module._state_entries(f"{prefix}{name}.")

    def state_dict(
        self, *, destination: dict[str, Any] | None = None, prefix: str = "", keep_vars: bool = False
    ) -> OrderedDict[str, Tensor]:
        """An ordered mapping from dotted names to (detached) tensors sharing the module's arrays.

        Keys as PyTorch's: ``conv1.weight``, ``bn1.running_mean``, ``bn1.num_batches_tracked``, ...
        Save it with ``mr.save(model.state_dict(), path)``.
        """
        out: OrderedDict[str, Tensor] = OrderedDict() if destination is None else destination  # type: ignore[assignment]
        for key, tensor, _ in self._state_entries(prefix):
            out[key] = tensor if keep_vars else tensor.detach()
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy values (numpy/cupy arrays, Tensors, torch tensors) into the parameters and buffers in place.

        Values are cast to each parameter's dtype and moved to its device. Every problem (missing
        keys, unexpected keys, size mismatches) is collected into one RuntimeError, and nothing is
        copied when there is one. A BatchNorm's ``num_batches_tracked`` may be absent (old
        torchvision checkpoints lack it; it keeps its value), as in PyTorch. With ``strict=False``
        missing and unexpected keys are allowed and returned as ``(missing_keys, unexpected_keys)``;
        size mismatches still raise.
        """
        return load_into(type(self).__name__, list(self._state_entries()), state_dict, strict)

    # ----- printing ---------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """The layer's own settings, shown inside its repr (``3, 64, kernel_size=(3, 3)``)."""
        return ""

    def _get_name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({name}): {_addindent(repr(module), 2)}" for name, module in self._modules.items()]
        lines = extra_lines + child_lines
        body = ""
        if lines:
            if len(extra_lines) == 1 and not child_lines:
                body = extra_lines[0]
            else:
                body = "\n  " + "\n  ".join(lines) + "\n"
        return f"{self._get_name()}({body})"
