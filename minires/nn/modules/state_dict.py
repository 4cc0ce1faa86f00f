"""Loading a state dict into a module's tensors: key matching, shape checks, one clear error.

Kept apart from ``Module`` because it is the one place that knows about foreign checkpoint values
(numpy, cupy, PyTorch tensors) and PyTorch's error wording, which users grep for.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import numpy as np

from minires import backend
from minires.tensor import Tensor


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(strict=False)`` returns: the keys it had to skip."""

    missing_keys: list[str]
    unexpected_keys: list[str]

    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return f"IncompatibleKeys(missing_keys={self.missing_keys}, unexpected_keys={self.unexpected_keys})"


def checkpoint_array(value: Any) -> Any:
    """The raw array behind a checkpoint value: a Tensor, a numpy/cupy array, a number or a torch tensor."""
    if isinstance(value, Tensor):
        return value.data
    if type(value).__module__.split(".")[0] == "torch":  # a PyTorch tensor, without importing torch
        return value.detach().cpu().numpy()
    try:
        backend.device_of(value)
    except TypeError:
        return np.asarray(value)
    return value


def _quoted(keys: list[str]) -> str:
    return ", ".join(f'"{k}"' for k in keys)


def _wrapped_checkpoint_hint(state_dict: Mapping[str, Any], unexpected: list[str]) -> str:
    """A hint when the keys do not match because the weights are wrapped, as published checkpoints often are."""
    nested = [k for k in unexpected if isinstance(state_dict[k], Mapping)]
    if nested:
        return (f"\n\t(the dict holds its weights under {nested[0]!r}: pass mr.unwrap_state_dict(checkpoint), which also "
                "drops nn.DataParallel's 'module.' prefix)")
    if unexpected and all(str(k).startswith("module.") for k in unexpected):
        return "\n\t(every unexpected key starts with 'module.', as nn.DataParallel saves them: pass mr.unwrap_state_dict(checkpoint))"
    return ""


def load_into(
    owner: str, entries: list[tuple[str, Tensor, bool]], state_dict: Mapping[str, Any], strict: bool
) -> IncompatibleKeys:
    """Copy ``state_dict[key]`` into each ``(key, tensor, optional)`` of ``entries``, all or nothing.

    An ``optional`` entry absent from ``state_dict`` keeps its value and is not reported missing.

    ``owner`` names the module in the error ("Error(s) in loading state_dict for ResNet: ...").
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict).__name__}.")
    errors: list[str] = []
    missing: list[str] = []
    copies: list[tuple[Tensor, Any]] = []
    expected: set[str] = set()
    for key, tensor, optional in entries:
        expected.add(key)
        if key not in state_dict:
            if not optional:
                missing.append(key)
            continue
        try:
            array = checkpoint_array(state_dict[key])
        except Exception as exc:  # noqa: BLE001 - reported with the key, like PyTorch
            errors.append(f"While copying the parameter named \"{key}\", an exception occurred: {exc}.")
            continue
        source, target = tuple(array.shape), tensor.shape
        if target == () and source == (1,):
            array = array.reshape(())  # old checkpoints stored scalars as 1-element vectors
        elif source != target:
            errors.append(
                f"size mismatch for {key}: copying a param with shape {source} from checkpoint, "
                f"the shape in current model is {target}."
            )
            continue
        copies.append((tensor, array))
    unexpected = [key for key in state_dict if key not in expected]
    if strict:
        if unexpected:
            errors.insert(0, f"Unexpected key(s) in state_dict: {_quoted(unexpected)}. ")
        if missing:
            errors.insert(0, f"Missing key(s) in state_dict: {_quoted(missing)}. ")
    if errors:
        hint = _wrapped_checkpoint_hint(state_dict, unexpected)
        raise RuntimeError(f"Error(s) in loading state_dict for {owner}:\n\t" + "\n\t".join(errors) + hint)
    for tensor, array in copies:
        tensor.data[...] = backend.to_device(array, tensor.device).astype(tensor.dtype, copy=False)
        tensor._bump_version()
    return IncompatibleKeys(missing, unexpected)
