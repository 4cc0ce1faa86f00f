"""``Optimizer``: the base class of minires' optimizers (param groups, per-parameter state, state dicts).

Updates happen in place on ``p.data`` (the same array object, same dtype, same device), so a model
that holds its parameters keeps seeing the new values. State arrays live on their parameter's device.

State dict format (PyTorch's)::

    {"state": {param_index: {"step": int, "exp_avg": array, ...}},   # only params that have state
     "param_groups": [{"lr": float, ..., "params": [param_index, ...]}, ...]}

``param_index`` counts parameters in group order. Values are raw numpy/cupy arrays, Python numbers,
bools, tuples and lists only, so :func:`minires.save_tree` writes any optimizer or scheduler state
dict to ``.npz`` and :func:`minires.load_tree` gives it back exactly: a resumed run takes
bit-identical steps. ``load_state_dict`` also accepts numbers as 0-d arrays and lists as dicts keyed
0..n-1 (what a flat dotted-key file gives back).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np

from minires import backend
from minires.autograd.grad_mode import enable_grad
from minires.tensor import Tensor

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]


class _Required:
    """Marker for a hyperparameter with no default (must be given per group or as a default)."""

    def __repr__(self) -> str:
        return "<required parameter>"


required = _Required()


def to_python(value: Any) -> Any:
    """A loaded value as plain Python: 0-d arrays -> scalars, 1-d arrays -> lists; others unchanged."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.item() if value.ndim == 0 else value.tolist()
    return value


def as_index_list(value: Any, what: str) -> list[Any]:
    """A list stored as a list, or as a dict with keys 0..n-1 (what a flat dotted-key file gives back)."""
    if isinstance(value, Mapping):
        keys = sorted(int(k) for k in value)
        if keys != list(range(len(keys))):
            raise ValueError(f"{what}: expected entries numbered 0..{len(keys) - 1}, got keys {keys}")
        return [value[k] if k in value else value[str(k)] for k in keys]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TypeError(f"{what}: expected a list, got {type(value).__name__}")


class Optimizer:
    """Base class: holds ``param_groups`` (dicts of hyperparameters plus ``"params"``) and ``state``.

    Subclasses implement :meth:`step` and may override :meth:`_validate_group` (checked for every
    group added or loaded).
    """

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.state: dict[Tensor, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        if isinstance(params, Tensor):
            raise TypeError(
                f"{self._name}: params should be an iterable of Tensors or dicts, but got a Tensor"
            )
        self._check_ordered(params)
        groups = list(params)
        if not groups:
            raise ValueError(f"{self._name}: got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    @property
    def _name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        lines = [f"{self._name} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params")
        lines.append(")")
        return "\n".join(lines)

    # ----- groups -----------------------------------------------------------------------------
    def _check_ordered(self, params: Any) -> None:
        """Refuse a set: its order changes between runs, and state dicts map state to parameters by position."""
        if isinstance(params, (set, frozenset)):
            raise TypeError(
                f"{self._name}: parameters must be given in an ordered collection (a list), not a set: a set's "
                "order changes between runs, so a saved optimizer state would be loaded into the wrong parameters"
            )

    def _validate_group(self, group: dict[str, Any]) -> None:
        """Raise ValueError naming the optimizer and the value when a hyperparameter is invalid."""
        lr = group.get("lr")
        if lr is not None and not lr >= 0.0:
            raise ValueError(f"{self._name}: invalid learning rate lr={lr} (must be >= 0)")
        wd = group.get("weight_decay")
        if wd is not None and not wd >= 0.0:
            raise ValueError(f"{self._name}: invalid weight_decay={wd} (must be >= 0)")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters (``{"params": [...], **hyperparameters}``); missing ones take defaults."""
        if not isinstance(param_group, dict):
            raise TypeError(f"{self._name}: a param group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        params = group.get("params")
        if params is None:
            raise ValueError(f"{self._name}: a param group needs a 'params' entry")
        self._check_ordered(params)
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"{self._name}: can only optimize Tensors, got {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(f"{self._name}: can't optimize a non-leaf Tensor (shape {p.shape})")
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"{self._name}: a parameter appears twice in one param group")
        group["params"] = params
        for key, default in self.defaults.items():
            if default is required and key not in group:
                raise ValueError(f"{self._name}: param group didn't specify a value of required parameter {key!r}")
            group.setdefault(key, default)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError(f"{self._name}: some parameters appear in more than one parameter group")
        self._validate_group(group)
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every parameter's gradient: to None (default) or to zeros in place."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.data[...] = 0

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; returns ``closure()``'s loss when given."""
        raise NotImplementedError

    def _run_closure(self, closure: Callable[[], Any] | None) -> Any:
        if closure is None:
            return None
        with enable_grad():
            return closure()

    # ----- state dicts ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state in PyTorch's format (see the module docstring); arrays are copies."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            saved = {k: (list(v) if isinstance(v, list) else v) for k, v in group.items() if k != "params"}
            saved["params"] = ids
            groups.append(saved)
        state: dict[int, dict[str, Any]] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if self.state.get(p):
                    state[index[id(p)]] = {
                        k: (v.copy() if hasattr(v, "copy") and hasattr(v, "shape") else v)
                        for k, v in self.state[p].items()
                    }
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore hyperparameters and state saved by :meth:`state_dict` (or its flattened round trip).

        Raises ValueError when the number of groups or of parameters in a group differs, or when a
        state array's shape does not match its parameter's.
        """
        name = f"{self._name}.load_state_dict"
        if "param_groups" not in state_dict:
            raise ValueError(f"{name}: the state dict has no 'param_groups' entry")
        saved_groups = as_index_list(state_dict["param_groups"], f"{name}: param_groups")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{name}: the state dict has {len(saved_groups)} parameter groups, "
                f"the optimizer has {len(self.param_groups)}"
            )
        id_map: dict[int, Tensor] = {}
        new_groups = []
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            saved_ids = [int(k) for k in np.asarray(to_python(saved.get("params", [])), dtype=np.int64).ravel()]
            if len(saved_ids) != len(group["params"]):
                raise ValueError(
                    f"{name}: parameter group {i} has {len(saved_ids)} parameters in the state dict, "
                    f"{len(group['params'])} in the optimizer"
                )
            id_map.update(zip(saved_ids, group["params"]))
            new_group = {"params": group["params"]}
            for key, value in saved.items():
                if key == "params":
                    continue
                value = to_python(value)
                if isinstance(value, list) and isinstance(group.get(key, self.defaults.get(key)), tuple):
                    value = tuple(value)
                new_group[key] = value
            self._validate_group(new_group)
            new_groups.append(new_group)
        new_state: dict[Tensor, dict[str, Any]] = {}
        for key, saved_state in dict(state_dict.get("state", {})).items():
            idx = int(key)
            if idx not in id_map:
                raise ValueError(f"{name}: the state dict has state for parameter {idx}, which no group holds")
            p = id_map[idx]
            new_state[p] = {k: self._load_state_value(p, k, v, f"{name}: state[{idx}][{k!r}]")
                            for k, v in saved_state.items()}
        self.param_groups = new_groups
        self.state = new_state

    @staticmethod
    def _load_state_value(p: Tensor, key: str, value: Any, where: str) -> Any:
        """``step`` as an int; arrays copied onto the parameter's device in its dtype."""
        if key == "step":
            return int(to_python(value))
        if isinstance(value, Tensor):
            value = value.data
        if not hasattr(value, "shape"):
            value = np.asarray(value)
        if tuple(value.shape) != p.shape:
            raise ValueError(f"{where}: shape {tuple(value.shape)} does not match the parameter's {p.shape}")
        value = backend.to_device(value, p.device)
        return value.astype(p.dtype, copy=True)
