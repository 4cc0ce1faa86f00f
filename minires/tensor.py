"""``Tensor``: an array (numpy or cupy) plus what autograd needs to send gradients back to it."""

from __future__ import annotations

import weakref
from typing import Any, Callable

import numpy as np

from minires import backend
from minires.autograd.engine import root_gradient, run_backward
from minires.autograd.grad_mode import is_grad_enabled
from minires.autograd.inplace import apply_inplace

DEFAULT_FLOAT = np.dtype(np.float32)


def _dim_args(name: str, dim: Any, keepdim: bool, axis: Any, keepdims: Any) -> tuple[Any, bool]:
    """Accept PyTorch's (dim, keepdim) or numpy's (axis, keepdims) spelling, not both."""
    if axis is not None:
        if dim is not None:
            raise TypeError(f"{name}: give dim or axis, not both")
        dim = axis
    if keepdims is not None:
        keepdim = keepdims
    return dim, bool(keepdim)


_DTYPE_NAMES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32", "bool": "bool"}


def _as_dtype(value: Any) -> np.dtype | None:
    """``value`` as a dtype when ``to`` should read it as one: a numpy dtype or scalar type, or a name
    ("float64", "torch.float32", PyTorch's aliases "float", "double", "half", "long", "int", "bool");
    None for anything else (a device)."""
    if isinstance(value, (np.dtype, type)):
        return np.dtype(value)
    if isinstance(value, str) and value.split(":")[0].lower() not in ("cpu", "cuda"):
        name = value.removeprefix("torch.")
        try:
            return np.dtype(_DTYPE_NAMES.get(name, name))
        except TypeError:
            return None
    return None


def _check_same_meta(what: str, array: Any, tensor: Tensor) -> None:
    """Raise unless ``array`` matches ``tensor`` in shape, dtype and device (gradients must)."""
    if tuple(array.shape) != tensor.shape:
        raise RuntimeError(f"{what} has shape {tuple(array.shape)}, expected the tensor's shape {tensor.shape}")
    if array.dtype != tensor.dtype:
        raise RuntimeError(f"{what} has dtype {array.dtype}, expected the tensor's dtype {tensor.dtype} (shape {tensor.shape})")
    if backend.device_of(array) != tensor.device:
        raise RuntimeError(
            f"{what} is on {backend.device_of(array)}, expected the tensor's device {tensor.device} (shape {tensor.shape})"
        )


class RemovableHandle:
    """What ``register_hook`` returns: ``.remove()`` takes the hook out again (calling it does too)."""

    def __init__(self, hooks: list[Any], hook: Any) -> None:
        self._hooks = hooks
        self._hook = hook

    def remove(self) -> None:
        if any(h is self._hook for h in self._hooks):
            self._hooks.remove(self._hook)

    __call__ = remove


class _VersionCounter:
    """How many times a tensor's data has been changed in place; shared by a tensor and its views.

    ``views`` holds weak references to views that take part in autograd, so an in-place op recorded
    on their base can refuse to make them stale.
    """

    __slots__ = ("version", "views")

    def __init__(self) -> None:
        self.version = 0
        self.views: list[Any] = []


class Tensor:
    """An n-dimensional array that can record the ops applied to it and backpropagate through them.

    ``data`` is the raw numpy (CPU) or cupy (GPU) array; ``grad`` is a Tensor or None; ``grad_fn``
    is the graph node that made this tensor (None for leaves, which users create).
    """

    __array_priority__ = 1000  # so ndarray <op> Tensor defers to Tensor's reflected operators

    def __init__(self, data: Any, requires_grad: bool = False) -> None:
        if isinstance(data, Tensor):
            data = data.data
        if getattr(data, "dtype", None) is not None and data.dtype.kind not in "biufc":
            raise TypeError(f"Tensor: cannot hold an array of dtype {data.dtype} (only bool, integer and float data)")
        self.data = data
        self._grad: Tensor | None = None
        self.grad_fn: Any = None
        self._output_index = 0
        self._hooks: list[Callable[[Tensor], Any]] = []
        self._retains_grad = False
        self._vc = _VersionCounter()
        self._base: Tensor | None = None
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _from_array(cls, array: Any) -> Tensor:
        t = cls.__new__(cls)
        t.data = array
        t._grad = None
        t.grad_fn = None
        t._output_index = 0
        t._hooks = []
        t._retains_grad = False
        t._vc = _VersionCounter()
        t._base = None
        t.requires_grad = False
        return t

    def _make_view_of(self, base: Tensor) -> None:
        """Share ``base``'s version counter: this tensor's data is a view of ``base``'s. Views of a
        non-leaf in a recorded graph are remembered (weakly) so in-place ops on the base can refuse."""
        self._vc = base._vc
        self._base = base._base if base._base is not None else base
        if base.requires_grad and base.grad_fn is not None and is_grad_enabled():
            views = self._vc.views
            if len(views) >= 16:
                views[:] = [r for r in views if r() is not None]
            views.append(weakref.ref(self))

    # ----- versions and in-place changes ----------------------------------------------------
    @property
    def _version(self) -> int:
        """How many in-place changes this tensor's data (or a view sharing it) has seen (PyTorch's ``_version``)."""
        return self._vc.version

    def _bump_version(self) -> None:
        """Record an in-place change of ``data`` (done by minires: in-place ops, optimizers, init, loading)."""
        self._vc.version += 1

    @property
    def grad(self) -> Tensor | None:
        """The accumulated gradient (a Tensor shaped like this one), or None."""
        return self._grad

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        if value is not None:
            if not isinstance(value, Tensor):
                raise TypeError(f"grad: assigned grad must be a Tensor or None, got {type(value).__name__}")
            _check_same_meta("grad: assigned grad", value.data, self)
        self._grad = value

    # ----- properties -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    @property
    def T(self) -> Tensor:  # noqa: N802 - numpy/PyTorch name
        return self.permute(*reversed(range(self.ndim)))

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return self.ndim

    def numel(self) -> int:
        return int(self.data.size)

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    # ----- conversion -------------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """The data as a numpy array (a copy from the GPU; shares memory on the CPU)."""
        return backend.to_numpy(self.data)

    def item(self) -> Any:
        if self.data.size != 1:
            raise ValueError(f"item: only a one-element tensor converts to a Python number, got shape {self.shape}")
        return backend.to_numpy(self.data).reshape(()).item()

    def tolist(self) -> Any:
        return self.numpy().tolist()

    def to(self, device: Any = None, dtype: Any = None) -> Tensor:
        """A copy on another device and/or with another dtype (differentiable); self if nothing changes.

        ``t.to("cuda")``, ``t.to(mr.float64)``, ``t.to("float64")``, ``t.to("cpu", mr.float16)``,
        ``t.to(other)`` (other's device and dtype)."""
        from minires.ops.shape import to_device_dtype

        if isinstance(device, Tensor):  # t.to(other): other's device and dtype, as PyTorch
            device, dtype = device.device, device.dtype
        elif dtype is None and _as_dtype(device) is not None:
            device, dtype = None, _as_dtype(device)
        elif isinstance(dtype, str):
            parsed = _as_dtype(dtype)
            if parsed is None:
                raise TypeError(f"to: {dtype!r} is not a dtype (use e.g. mr.float64 or 'float64')")
            dtype = parsed
        return to_device_dtype(self, device, dtype)

    def cpu(self) -> Tensor:
        return self.to("cpu")

    def cuda(self) -> Tensor:
        return self.to("cuda")

    def float(self) -> Tensor:
        return self.to(dtype=np.float32)

    def double(self) -> Tensor:
        return self.to(dtype=np.float64)

    def half(self) -> Tensor:
        return self.to(dtype=np.float16)

    def long(self) -> Tensor:
        return self.to(dtype=np.int64)

    def int(self) -> Tensor:
        return self.to(dtype=np.int32)

    def bool(self) -> Tensor:
        return self.to(dtype=np.bool_)

    def type(self, dtype: Any) -> Tensor:
        return self.to(dtype=dtype)

    # ----- autograd ---------------------------------------------------------------------------
    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        """Make a leaf tensor track gradients (only floating-point tensors can)."""
        if requires_grad and self.data.dtype.kind not in "fc":
            raise RuntimeError(
                f"requires_grad: only floating-point tensors can require gradients, got dtype {self.dtype}"
            )
        if not requires_grad and self.grad_fn is not None:
            raise RuntimeError("requires_grad_(False): only leaf tensors can stop requiring grad; use detach()")
        self.requires_grad = bool(requires_grad)
        return self

    def detach(self) -> Tensor:
        """The same data, cut off from the graph (shares the version counter, as PyTorch)."""
        out = Tensor._from_array(self.data)
        out._vc = self._vc
        return out

    def clone(self) -> Tensor:
        """A copy of the data with its own memory; differentiable (the gradient passes through)."""
        return _ops.clone(self)

    def retain_grad(self) -> None:
        """Keep ``.grad`` on a non-leaf tensor after backward."""
        if not self.requires_grad:
            raise RuntimeError("retain_grad: the tensor does not require grad")
        if self.grad_fn is None:
            return  # leaves keep their grad anyway
        import weakref

        self._retains_grad = True
        self.grad_fn.retained[self._output_index] = weakref.ref(self)

    def register_hook(self, hook: Callable[[Tensor], Any]) -> Callable[[], None]:
        """Call ``hook(grad)`` when this tensor's gradient is computed; a returned tensor replaces it.

        Returns a handle: ``handle.remove()`` (or ``handle()``) removes the hook, as PyTorch's.
        """
        if not self.requires_grad:
            raise RuntimeError("register_hook: cannot register a hook on a tensor that does not require grad")
        hooks = self._hooks if self.grad_fn is None else self.grad_fn.hooks.setdefault(self._output_index, [])
        hooks.append(hook)
        return RemovableHandle(hooks, hook)

    def _accumulate_grad(self, grad: Any) -> None:
        if self.grad is None:
            # A fresh, writable array of our own: backward may hand over a read-only broadcast view
            # (sum's backward), the same array it gave another input (add's), or the caller's gradient.
            self._grad = Tensor._from_array(backend.xp_of(grad).array(grad, copy=True))
        else:
            self._grad = Tensor._from_array(backend.xp_of(grad).asarray(self._grad.data + grad))

    def backward(self, gradient: Any = None, retain_graph: bool | None = None, create_graph: bool = False) -> None:
        """Compute the gradient of this tensor with respect to every leaf that requires grad.

        ``gradient`` is dL/d(self); it may be omitted only for a one-element tensor. With
        ``create_graph=True`` the gradients put into ``.grad`` are Tensors with a graph of their own,
        so they can be differentiated again; ``retain_graph`` defaults to ``create_graph``.
        """
        grad = root_gradient("backward", self, gradient, create_graph)
        keep = create_graph if retain_graph is None else retain_graph
        run_backward([self], [grad], retain_graph=keep, create_graph=create_graph)

    # ----- in-place ops (PyTorch's rules: minires/autograd/inplace.py) ------------------------
    def _inplace(self, name: str, compute: Callable[..., Tensor], *others: Any) -> Tensor:
        """Change this tensor's data to ``compute(self, *others)`` in place (see :func:`apply_inplace`)."""
        return apply_inplace(self, name, compute, *others)

    def __iadd__(self, other: Any) -> Tensor:
        return self._inplace("add_", _ops.add, other)

    def __isub__(self, other: Any) -> Tensor:
        return self._inplace("sub_", _ops.sub, other)

    def __imul__(self, other: Any) -> Tensor:
        return self._inplace("mul_", _ops.mul, other)

    def __itruediv__(self, other: Any) -> Tensor:
        return self._inplace("div_", _ops.div, other)

    def __ipow__(self, other: Any) -> Tensor:
        return self._inplace("pow_", _ops.pow, other)

    def add_(self, other: Any, *, alpha: Any = 1) -> Tensor:
        """self += alpha * other, in place."""
        if alpha == 1:
            return self._inplace("add_", _ops.add, other)
        return self._inplace("add_", lambda s, o: _ops.add(s, _ops.mul(o, alpha)), other)

    def sub_(self, other: Any, *, alpha: Any = 1) -> Tensor:
        """self -= alpha * other, in place."""
        if alpha == 1:
            return self._inplace("sub_", _ops.sub, other)
        return self._inplace("sub_", lambda s, o: _ops.sub(s, _ops.mul(o, alpha)), other)

    def mul_(self, other: Any) -> Tensor:
        return self._inplace("mul_", _ops.mul, other)

    def div_(self, other: Any) -> Tensor:
        return self._inplace("div_", _ops.div, other)

    def pow_(self, other: Any) -> Tensor:
        return self._inplace("pow_", _ops.pow, other)

    def neg_(self) -> Tensor:
        return self._inplace("neg_", _ops.neg)

    def exp_(self) -> Tensor:
        return self._inplace("exp_", _ops.exp)

    def sqrt_(self) -> Tensor:
        return self._inplace("sqrt_", _ops.sqrt)

    def addcmul_(self, tensor1: Any, tensor2: Any, *, value: Any = 1) -> Tensor:
        """self += value * tensor1 * tensor2, in place (an Adam-style update)."""
        return self._inplace("addcmul_", lambda s, a, b: _ops.add(s, _ops.mul(_ops.mul(a, b), value)), tensor1, tensor2)

    def addcdiv_(self, tensor1: Any, tensor2: Any, *, value: Any = 1) -> Tensor:
        """self += value * tensor1 / tensor2, in place."""
        return self._inplace("addcdiv_", lambda s, a, b: _ops.add(s, _ops.mul(_ops.div(a, b), value)), tensor1, tensor2)

    def lerp_(self, end: Any, weight: Any) -> Tensor:
        """self += weight * (end - self), in place (an exponential moving average)."""
        return self._inplace("lerp_", lambda s, e: _ops.add(s, _ops.mul(_ops.sub(e, s), weight)), end)

    def clamp_(self, min: Any = None, max: Any = None) -> Tensor:  # noqa: A002 - PyTorch's names
        return self._inplace("clamp_", lambda s: _ops.clamp(s, min, max))

    clip_ = clamp_

    def relu_(self) -> Tensor:
        return self._inplace("relu_", _ops.relu)

    def zero_(self) -> Tensor:
        """Fill with zeros in place."""
        return self.fill_(0)

    def fill_(self, value: Any) -> Tensor:
        """Fill with ``value`` (a number or a one-element tensor) in place; the old values get no gradient."""
        return self._inplace("fill_", lambda s, v: _ops.index_put(s, Ellipsis, v), value)

    def copy_(self, src: Any) -> Tensor:
        """Copy ``src`` (broadcast to this shape, cast to this dtype and device) into this tensor in place."""
        src = src if isinstance(src, Tensor) else Tensor._from_array(np.asarray(src))

        return self._inplace("copy_", lambda s, o: _ops.index_put(s, Ellipsis, o.to(s.device, s.dtype)), src)

    # ----- printing ---------------------------------------------------------------------------
    def __repr__(self) -> str:
        body = np.array2string(backend.to_numpy(self.data), separator=", ", prefix="tensor(", precision=4)
        extras = []
        if self.device != "cpu":
            extras.append(f"device='{self.device}'")
        if self.dtype != DEFAULT_FLOAT and self.dtype.kind == "f":
            extras.append(f"dtype={self.dtype}")
        if self.grad_fn is not None:
            extras.append(f"grad_fn=<{self.grad_fn.name}Backward>")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return f"tensor({body}{''.join(', ' + e for e in extras)})"

    def __bool__(self) -> bool:
        if self.data.size != 1:
            raise RuntimeError(f"bool: the truth value of a tensor with {self.data.size} elements is ambiguous")
        return bool(self.item())

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __index__(self) -> int:
        if self.dtype.kind not in "iub":
            raise TypeError(f"only integer tensors can be used as an index, got dtype {self.dtype}")
        return int(self.item())

    __hash__ = object.__hash__

    # ----- arithmetic (each delegates to an op in minires.ops) --------------------------------
    def __add__(self, other: Any) -> Tensor:
        return _ops.add(self, other)

    def __radd__(self, other: Any) -> Tensor:
        return _ops.add(other, self)

    def __sub__(self, other: Any) -> Tensor:
        return _ops.sub(self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return _ops.sub(other, self)

    def __mul__(self, other: Any) -> Tensor:
        return _ops.mul(self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return _ops.mul(other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return _ops.div(self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return _ops.div(other, self)

    def __pow__(self, other: Any) -> Tensor:
        return _ops.pow(self, other)

    def __rpow__(self, other: Any) -> Tensor:
        return _ops.pow(other, self)

    def __neg__(self) -> Tensor:
        return _ops.neg(self)

    def __pos__(self) -> Tensor:
        return self

    def __abs__(self) -> Tensor:
        return _ops.abs(self)

    def __matmul__(self, other: Any) -> Tensor:
        return _ops.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return _ops.matmul(other, self)

    def __lt__(self, other: Any) -> Tensor:  # type: ignore[override]
        return _ops.lt(self, other)

    def __le__(self, other: Any) -> Tensor:  # type: ignore[override]
        return _ops.le(self, other)

    def __gt__(self, other: Any) -> Tensor:  # type: ignore[override]
        return _ops.gt(self, other)

    def __ge__(self, other: Any) -> Tensor:  # type: ignore[override]
        return _ops.ge(self, other)

    def __eq__(self, other: Any) -> Any:  # type: ignore[override]
        if other is None:  # ``t == None`` is False (and ``t != None`` True), as PyTorch
            return False
        return _ops.eq(self, other)

    def __ne__(self, other: Any) -> Any:  # type: ignore[override]
        if other is None:
            return True
        return _ops.ne(self, other)

    def __getitem__(self, index: Any) -> Tensor:
        return _ops.getitem(self, index)

    def __setitem__(self, index: Any, value: Any) -> None:
        """``x[index] = value`` in place, with the rules of the in-place ops (recorded on non-leaves)."""
        if is_grad_enabled() and (self.requires_grad or (isinstance(value, Tensor) and value.requires_grad)):
            self._inplace("setitem", lambda s, v: _ops.index_put(s, index, v), value)
            return
        # nothing to record: write straight into the array (no copy of the whole tensor per assignment)
        self.data[_ops.shape.raw_index(index)] = value.data if isinstance(value, Tensor) else value
        self._vc.version += 1

    # ----- math methods -------------------------------------------------------------------------
    def exp(self) -> Tensor:
        return _ops.exp(self)

    def log(self) -> Tensor:
        return _ops.log(self)

    def sqrt(self) -> Tensor:
        return _ops.sqrt(self)

    def tanh(self) -> Tensor:
        return _ops.tanh(self)

    def sigmoid(self) -> Tensor:
        return _ops.sigmoid(self)

    def relu(self) -> Tensor:
        return _ops.relu(self)

    def abs(self) -> Tensor:
        return _ops.abs(self)

    def clamp(self, min: Any = None, max: Any = None) -> Tensor:  # noqa: A002 - PyTorch's names
        return _ops.clamp(self, min, max)

    clip = clamp

    def maximum(self, other: Any) -> Tensor:
        return _ops.maximum(self, other)

    def minimum(self, other: Any) -> Tensor:
        return _ops.minimum(self, other)

    def sum(self, dim: Any = None, keepdim: bool = False, *, axis: Any = None, keepdims: Any = None) -> Tensor:
        dim, keepdim = _dim_args("sum", dim, keepdim, axis, keepdims)
        return _ops.sum(self, dim, keepdim)

    def mean(self, dim: Any = None, keepdim: bool = False, *, axis: Any = None, keepdims: Any = None) -> Tensor:
        dim, keepdim = _dim_args("mean", dim, keepdim, axis, keepdims)
        return _ops.mean(self, dim, keepdim)

    def var(
        self,
        dim: Any = None,
        keepdim: bool = False,
        *,
        unbiased: bool | None = None,
        correction: Any = None,
        axis: Any = None,
        keepdims: Any = None,
    ) -> Tensor:
        """Variance dividing by n - correction: 1 by default (PyTorch's), ``correction=0`` (or
        ``unbiased=False``) divides by n (numpy's)."""
        dim, keepdim = _dim_args("var", dim, keepdim, axis, keepdims)
        return _ops.var(self, dim, keepdim, unbiased, correction=correction)

    def std(self, *args: Any, **kwargs: Any) -> Tensor:
        """Standard deviation: sqrt of :meth:`var`, with the same arguments."""
        return self.var(*args, **kwargs).sqrt()

    def max(self, dim: Any = None, keepdim: bool = False, *, axis: Any = None, keepdims: Any = None) -> Any:
        """``max()`` -> the largest value; ``max(dim)`` -> (values, indices) as PyTorch."""
        dim, keepdim = _dim_args("max", dim, keepdim, axis, keepdims)
        return _ops.max(self, dim, keepdim)

    def min(self, dim: Any = None, keepdim: bool = False, *, axis: Any = None, keepdims: Any = None) -> Any:
        dim, keepdim = _dim_args("min", dim, keepdim, axis, keepdims)
        return _ops.min(self, dim, keepdim)

    def amax(self, dim: Any = None, keepdim: bool = False) -> Tensor:
        return _ops.amax(self, dim, keepdim)

    def amin(self, dim: Any = None, keepdim: bool = False) -> Tensor:
        return _ops.amin(self, dim, keepdim)

    def argmax(self, dim: Any = None, keepdim: bool = False) -> Tensor:
        return _ops.argmax(self, dim, keepdim)

    def argmin(self, dim: Any = None, keepdim: bool = False) -> Tensor:
        return _ops.argmin(self, dim, keepdim)

    def softmax(self, dim: int = -1) -> Tensor:
        return _ops.softmax(self, dim)

    def log_softmax(self, dim: int = -1) -> Tensor:
        return _ops.log_softmax(self, dim)

    # ----- shape methods ------------------------------------------------------------------------
    def reshape(self, *shape: Any) -> Tensor:
        return _ops.reshape(self, *shape)

    def view(self, *shape: Any) -> Tensor:
        return _ops.reshape(self, *shape)

    def transpose(self, dim0: int = -2, dim1: int = -1) -> Tensor:
        return _ops.transpose(self, dim0, dim1)

    def permute(self, *dims: Any) -> Tensor:
        return _ops.permute(self, *dims)

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Tensor:
        return _ops.flatten(self, start_dim, end_dim)

    def squeeze(self, dim: Any = None) -> Tensor:
        return _ops.squeeze(self, dim)

    def unsqueeze(self, dim: int) -> Tensor:
        return _ops.unsqueeze(self, dim)

    def expand(self, *shape: Any) -> Tensor:
        return _ops.expand(self, *shape)

    def flip(self, *dims: Any) -> Tensor:
        return _ops.flip(self, dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims)

    def gather(self, dim: int, index: Any) -> Tensor:
        return _ops.gather(self, dim, index)

    def scatter_add(self, dim: int, index: Any, src: Any) -> Tensor:
        return _ops.scatter_add(self, dim, index, src)

    def isfinite(self) -> Tensor:
        return _ops.isfinite(self)

    def isnan(self) -> Tensor:
        return _ops.isnan(self)

    def pow(self, exponent: Any) -> Tensor:
        return _ops.pow(self, exponent)


from minires import ops as _ops  # noqa: E402  (ops import Tensor; the methods above call them)
