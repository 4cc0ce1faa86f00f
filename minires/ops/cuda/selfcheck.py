"""First contact with a real GPU: each fast kernel checks itself before it is trusted.

The first time a kernel family runs for a (dtype, device), :func:`passed` runs it on a small case and
compares it with the generic path on the same device (fast kernels off). A compile error, a launch
error or a mismatch switches that family off for that dtype, with one warning that says what failed;
the op then runs the generic code, so training continues, only slower. The verdicts are kept for the
process (:func:`results` lists them; ``python -m minires.cuda.check`` reports them).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

from minires.backend import to_device, to_numpy
from minires.ops.geometry import Window2d

# Tolerances of a fast kernel against the generic path, by dtype (they sum in different orders).
_TOLERANCE = {"float16": (1e-2, 1e-2), "float32": (1e-5, 1e-5), "float64": (1e-12, 1e-12)}

_results: dict[tuple[str, str, str], tuple[bool, str]] = {}


class FastKernelWarning(RuntimeWarning):
    """A fast kernel failed its self-check and was switched off (the generic path runs instead)."""


def _compare(name: str, fast: Any, reference: Any, dtype: str, exact: bool = False) -> None:
    got, want = to_numpy(fast), to_numpy(reference)
    if got.shape != want.shape:
        raise AssertionError(f"{name}: shape {got.shape}, generic path {want.shape}")
    if exact:
        if not np.array_equal(got, want):
            raise AssertionError(f"{name}: {int((got != want).sum())} of {got.size} values differ from the generic path")
        return
    rtol, atol = _TOLERANCE[dtype]
    bad = ~np.isclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol)
    if bad.any():
        worst = float(np.abs(got.astype(np.float64) - want).max())
        raise AssertionError(f"{name}: {int(bad.sum())} of {got.size} values differ from the generic path (max |diff| {worst:.3g})")


def _sample(device: str, dtype: str, shape: tuple[int, ...], seed: int) -> Any:
    host = np.random.default_rng(seed).normal(size=shape).astype(dtype)
    return to_device(host, device)


# A small case with every feature: a rectangular kernel, unequal strides, uneven padding, dilation.
_WINDOW = Window2d((7, 6), kernel=(3, 2), stride=(2, 1), padding=(1, 0, 2, 1), dilation=(1, 2), op="self-check")


def _check_im2col(dtype: str, device: str) -> None:
    from minires.ops import conv
    from minires.ops.cuda import fast_kernels_off, launch

    x = _sample(device, dtype, (2, 3, *_WINDOW.input_size), 0)
    fast = launch.im2col(x, _WINDOW)
    with fast_kernels_off():
        reference = conv._im2col(x, _WINDOW)
    _compare("im2col", fast, reference, dtype, exact=True)


def _check_col2im(dtype: str, device: str) -> None:
    from minires.ops import conv
    from minires.ops.cuda import fast_kernels_off, launch

    shape = (2, 3, *_WINDOW.input_size)
    oh, ow = _WINDOW.output_size
    cols = _sample(device, dtype, (2 * oh * ow, 3 * 3 * 2), 1)
    fast = launch.col2im(cols, shape, _WINDOW)
    with fast_kernels_off():
        reference = conv._col2im(cols, shape, _WINDOW)
    _compare("col2im", fast, reference, dtype)


def _check_batch_norm(dtype: str, device: str) -> None:
    """The fused forward (+residual)(+ReLU) on channels-last data and the backward on NCHW data,
    against the same formulas in array-module code."""
    from minires.ops.cuda import launch

    shape, c = (3, 4, 5, 2), 4
    x = launch.in_layout(_sample(device, dtype, shape, 2), channels_last=True)
    residual, g = _sample(device, dtype, shape, 3), _sample(device, dtype, shape, 4)
    mean, k, mean_g, proj = (_sample(device, dtype, (c,), s) for s in (5, 6, 7, 8))
    col = (1, c, 1, 1)
    forward = launch.bn_forward(x, mean, k, mean_g, residual=residual, relu=True)
    reference = (x - mean.reshape(col)) * k.reshape(col) + mean_g.reshape(col) + residual
    _compare("batch_norm forward", forward, reference * (reference > 0), dtype)
    backward = launch.bn_backward(g, x, mean, k, mean_g, proj)
    reference = k.reshape(col) * (g - mean_g.reshape(col) - (x - mean.reshape(col)) * proj.reshape(col))
    _compare("batch_norm backward", backward, reference, dtype)


CHECKS: dict[str, Callable[[str, str], None]] = {
    "im2col": _check_im2col,
    "col2im": _check_col2im,
    "batch_norm": _check_batch_norm,
}


def passed(family: str, dtype: Any, device: str) -> bool:
    """Whether ``family``'s kernel is trusted for (dtype, device); runs its self-check the first time."""
    key = (family, np.dtype(dtype).name, device)
    if key not in _results:
        _results[key] = (True, "checking")  # the check itself runs the kernel: no recursion
        try:
            CHECKS[family](key[1], device)
            _results[key] = (True, "matches the generic path")
        except Exception as exc:  # a compile error, a launch error or a mismatch: all switch the kernel off
            detail = f"{type(exc).__name__}: {exc}"
            _results[key] = (False, detail)
            warnings.warn(
                f"minires: the fast {family!r} kernel failed its first-use self-check for {key[1]} on {device!r} and "
                f"is switched off; the generic code runs instead (same results, slower). Please report this, with the "
                f"output of `python -m minires.cuda.check`. Cause: {detail}",
                FastKernelWarning,
                stacklevel=3,
            )
    return _results[key][0]


def results() -> dict[tuple[str, str, str], tuple[bool, str]]:
    """Every verdict so far: (family, dtype, device) -> (passed, what happened)."""
    return dict(_results)


def reset() -> None:
    """Forget every verdict (the next use checks again)."""
    _results.clear()


__all__ = ["CHECKS", "FastKernelWarning", "passed", "reset", "results"]
