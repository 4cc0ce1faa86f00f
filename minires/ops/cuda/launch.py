"""Compiling and launching the kernels of :mod:`minires.ops.cuda.sources` on arrays.

A *launcher* runs one entry point over ``total`` elements: ``launcher(family, entry, total, args)``,
where ``args`` are the kernel's arguments in order (arrays for pointers, ``numpy.int64`` for
``long long``, ``numpy.int32`` for ``int``). The "cuda" device's launcher compiles each family once
with ``cupy.RawModule`` (NVRTC) and launches a grid-stride grid; tests register a host launcher for
their pretend device (``tests/cuda_host.py``: the same source built with g++), so everything below
this line also runs on the CPU.

The wrappers (:func:`im2col`, :func:`col2im`, :func:`bn_forward`, :func:`bn_backward`) allocate the
output with the input's array module, prepare the arguments and launch; window sizes come from
:class:`minires.ops.geometry.Window2d` (the one home of that arithmetic). They never decide whether a
fast kernel should run: that is :func:`minires.ops.cuda.use_fast_kernels`.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from minires.backend import device_of, xp_of
from minires.ops.cuda.sources import KERNELS, suffix_of
from minires.ops.geometry import Window2d
from minires.ops.layout import empty_in_layout, in_layout, is_channels_last


class Launcher(Protocol):
    def __call__(self, family: str, entry: str, total: int, args: tuple[Any, ...]) -> None: ...


RAW_MODULE_OPTIONS = ("-std=c++14",)
# What cupy.RawModule adds to those before NVRTC runs (CuPy 13/14, without jitify), besides -arch.
CUPY_ADDED_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")

THREADS_PER_BLOCK = 256
MAX_BLOCKS = 4096  # a grid-stride loop covers any size; more blocks than the GPU holds buy nothing


def launch_config(total: int, threads: int = THREADS_PER_BLOCK, max_blocks: int = MAX_BLOCKS) -> tuple[int, int]:
    """(blocks, threads per block) for ``total`` elements: enough blocks for one element a thread, capped."""
    return max(1, min(max_blocks, math.ceil(total / threads))), threads


class CupyLauncher:
    """The GPU launcher: compiles a family's source with ``cupy.RawModule`` on first use (once per
    process; CuPy also caches the binary on disk) and launches entry points with :func:`launch_config`."""

    def __init__(self) -> None:
        self._modules: dict[str, Any] = {}

    def module(self, family: str) -> Any:
        if family not in self._modules:
            import cupy

            source, _ = KERNELS[family]
            self._modules[family] = cupy.RawModule(code=source, options=RAW_MODULE_OPTIONS)
        return self._modules[family]

    def __call__(self, family: str, entry: str, total: int, args: tuple[Any, ...]) -> None:
        blocks, threads = launch_config(total)
        self.module(family).get_function(entry)((blocks,), (threads,), args)


_LAUNCHERS: dict[str, Launcher] = {"cuda": CupyLauncher()}


class KernelCompileError(RuntimeError):
    """NVRTC rejected a kernel source; the message carries the compiler's log."""


def nvrtc_compile(family: str, arch: str, source: str | None = None) -> str | bytes:
    """Compile a family's source (or ``source``) with NVRTC: PTX text for a virtual architecture
    ("compute_90"), a CUBIN (bytes) for a real one ("sm_90", which also runs ptxas over the PTX, so
    inline assembly is checked too).

    Calls NVRTC directly (``cupy.cuda.nvrtc``), which needs neither a GPU nor a driver: this is how CI
    checks every kernel, with the options ``cupy.RawModule`` uses on a GPU. Raises
    :class:`KernelCompileError` with NVRTC's log when the source is rejected.
    """
    from cupy.cuda import nvrtc

    text = KERNELS[family][0] if source is None else source
    program = nvrtc.createProgram(text, f"minires_{family}.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(program, [*RAW_MODULE_OPTIONS, *CUPY_ADDED_OPTIONS, f"-arch={arch}"])
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(program)
            raise KernelCompileError(f"NVRTC ({arch}) rejected the {family!r} kernels: {exc}\n{log}") from None
        if arch.startswith("sm_"):
            return bytes(nvrtc.getCUBIN(program))
        ptx = nvrtc.getPTX(program)
    finally:
        nvrtc.destroyProgram(program)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


def register_launcher(device: str, launcher: Launcher) -> None:
    """Let arrays of ``device`` run the fast kernels through ``launcher`` (tests: a host-emulation launcher)."""
    _LAUNCHERS[device] = launcher


def unregister_launcher(device: str) -> None:
    if device == "cuda":
        raise ValueError("unregister_launcher: the 'cuda' launcher is built in")
    _LAUNCHERS.pop(device, None)


def has_launcher(array: Any) -> bool:
    """Whether the array's device has a launcher (``cuda``, or a device a test registered)."""
    try:
        return device_of(array) in _LAUNCHERS
    except TypeError:
        return False


def _launch(family: str, prefix: str, dtype: Any, total: int, args: tuple[Any, ...], device: str) -> None:
    if total == 0:
        return
    entry = f"{prefix}_{suffix_of(np.dtype(dtype).name)}"
    _LAUNCHERS[device](family, entry, total, args)


def _geometry(channels: int, window: Window2d) -> tuple[np.int64, ...]:
    """The 13 ``long long`` geometry arguments (C, H, W, oH, oW, kH, kW, sH, sW, pT, pL, dH, dW)."""
    values = (channels, *window.input_size, *window.output_size, *window.kernel, *window.stride, *window.pad_before, *window.dilation)
    return tuple(np.int64(v) for v in values)


def im2col(x: Any, window: Window2d) -> Any:
    """(N, C, H, W) -> (N*oH*oW, kH*kW*C), the layout of :func:`minires.ops.conv.im2col`, over a checked window."""
    xp = xp_of(x)
    n, c = x.shape[:2]
    (kh, kw), (oh, ow) = window.kernel, window.output_size
    nhwc = xp.ascontiguousarray(x.transpose(0, 2, 3, 1))  # no copy when x is channels-last already
    cols = xp.empty((n * oh * ow, kh * kw * c), dtype=x.dtype)
    args = (nhwc, cols, np.int64(cols.size)) + _geometry(c, window)
    _launch("im2col", "minires_im2col", x.dtype, cols.size, args, device_of(x))
    return cols


def col2im(cols: Any, input_shape: tuple[int, int, int, int], window: Window2d) -> Any:
    """(N*oH*oW, kH*kW*C) -> (N, C, H, W) as a channels-last view, as :func:`minires.ops.conv.col2im`."""
    xp = xp_of(cols)
    n, c, h, w = input_shape
    cols = xp.ascontiguousarray(cols)
    img = xp.empty((n, h, w, c), dtype=cols.dtype)
    args = (cols, img, np.int64(img.size)) + _geometry(c, window)
    _launch("col2im", "minires_col2im", cols.dtype, img.size, args, device_of(cols))
    return img.transpose(0, 3, 1, 2)


# -- BatchNorm: (N, C, *spatial) arrays in NCHW or channels-last memory (minires.ops.layout) -----------
def _inner(shape: tuple[int, ...], channels_last: bool) -> int:
    """Elements between consecutive channels in memory: 1 channels-last, prod(spatial) for NCHW."""
    return 1 if channels_last else math.prod(shape[2:])


def _channel_coefficients(dtype: Any, *vectors: Any) -> list[Any]:
    """Per-channel vectors as contiguous arrays of the kernel's accumulator type (float64 for float64 data,
    float32 otherwise)."""
    acc = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    return [xp_of(v).ascontiguousarray(v.astype(acc, copy=False)) for v in vectors]


def bn_forward(x: Any, mean: Any, scale: Any, bias: Any, residual: Any = None, relu: bool = False) -> Any:
    """``y = (x - mean[c]) * scale[c] + bias[c] (+ residual) (then relu)`` in one pass; y has x's memory layout.

    x: (N, C, *spatial); mean, scale, bias: (C,); residual: x's shape (any layout; copied into x's if it differs).
    """
    xp = xp_of(x)
    channels_last = is_channels_last(x)
    x = in_layout(x, channels_last)
    res = x if residual is None else in_layout(residual, channels_last)
    y = empty_in_layout(xp, x.shape, x.dtype, channels_last)
    mean, scale, bias = _channel_coefficients(x.dtype, mean, scale, bias)
    args = (x, res, y, mean, scale, bias, np.int64(x.size), np.int64(x.shape[1]), np.int64(_inner(x.shape, channels_last)),
            np.int32(residual is not None), np.int32(bool(relu)))
    _launch("batch_norm", "minires_bn_forward", x.dtype, x.size, args, device_of(x))
    return y


def bn_backward(g: Any, x: Any, mean: Any, k: Any, mean_g: Any, proj: Any) -> Any:
    """``dx = k[c] * (g - mean_g[c] - (x - mean[c]) * proj[c])`` in one pass; dx has x's memory layout.

    g, x: (N, C, *spatial); mean, k, mean_g, proj: (C,).
    """
    channels_last = is_channels_last(x)
    x = in_layout(x, channels_last)
    g = in_layout(g, channels_last)
    dx = empty_in_layout(xp_of(x), x.shape, x.dtype, channels_last)
    mean, k, mean_g, proj = _channel_coefficients(x.dtype, mean, k, mean_g, proj)
    args = (g, x, dx, mean, k, mean_g, proj, np.int64(x.size), np.int64(x.shape[1]), np.int64(_inner(x.shape, channels_last)))
    _launch("batch_norm", "minires_bn_backward", x.dtype, x.size, args, device_of(x))
    return dx


__all__ = [
    "CupyLauncher",
    "KernelCompileError",
    "Launcher",
    "bn_backward",
    "bn_forward",
    "col2im",
    "has_launcher",
    "im2col",
    "in_layout",
    "is_channels_last",
    "launch_config",
    "nvrtc_compile",
    "register_launcher",
    "unregister_launcher",
]
