"""Every CUDA kernel compiles with NVRTC, for each dtype and two GPU generations, on a machine without a GPU.

NVRTC turns CUDA C++ into PTX (and, for a real architecture, into a CUBIN through its built-in ptxas) with
no driver and no device, so a typo, a type error or bad inline assembly in a kernel fails here, in CI,
instead of on the first GPU user's machine. compute_75 / sm_75 (Turing) and compute_90 / sm_90 (Hopper)
bracket the GPUs minires targets; CuPy itself compiles for the GPU's sm_XX.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys

import pytest
from kernel_toolchains import require_nvrtc

from minires.ops.cuda import sources
from minires.ops.cuda.launch import KernelCompileError, nvrtc_compile

ARCHS = ("compute_75", "compute_90", "sm_75", "sm_90")


@functools.cache
def _compiled(family: str, arch: str) -> str | bytes:
    return nvrtc_compile(family, arch)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [name for name, *_ in sources.DTYPES])
@pytest.mark.parametrize("family", sorted(sources.KERNELS))
def test_kernel_compiles_with_nvrtc(family: str, dtype: str, arch: str) -> None:
    require_nvrtc()
    out = _compiled(family, arch)
    suffix = sources.suffix_of(dtype)
    entries = [e for e in sources.entry_points(family) if e.endswith("_" + suffix)]
    assert entries
    if arch.startswith("sm_"):  # an ELF CUBIN whose symbol table names each extern "C" kernel
        assert out[:4] == b"\x7fELF"
        for entry in entries:
            assert entry.encode() + b"\x00" in out, f"{entry} missing from the CUBIN for {arch}"
        return
    assert f".target sm_{arch.split('_')[1]}" in out
    for entry in entries:  # an extern "C" kernel keeps its name: a .entry of that name is in the PTX
        assert re.search(rf"\.entry\s+{entry}\s*\(", out), f"{entry} missing from the PTX for {arch}"


@pytest.mark.parametrize(
    "break_it",
    [
        lambda s: s.replace("t /= g.kW;", "t /= g.kW", 1),  # a missing semicolon
        lambda s: s.replace("const long long src = im2col_source_index(i, g);", "const long long src = im2col_source_index(i, g, 0);"),
        lambda s: s.replace("col[i] = src >= 0 ? x[src] : Num<T>::from_acc(0);", "col[i] = src >= 0 ? x[src] : 0;"),  # no int -> half
    ],
    ids=["missing-semicolon", "wrong-arity", "int-to-half"],
)
def test_nvrtc_rejects_a_broken_kernel_with_its_log(break_it) -> None:
    require_nvrtc()
    broken = break_it(sources.IM2COL)
    assert broken != sources.IM2COL
    with pytest.raises(KernelCompileError, match=r"minires_im2col\.cu\(\d+\): error"):
        nvrtc_compile("im2col", "compute_90", source=broken)


def test_bad_inline_assembly_is_caught_by_the_real_architecture_build() -> None:
    """PTX for a virtual architecture carries inline asm unchecked; building for sm_XX runs ptxas over it."""
    require_nvrtc()
    broken = sources.BATCH_NORM.replace("cvt.rn.f16.f32", "cvt.rn.f16.f99")
    assert broken != sources.BATCH_NORM
    assert nvrtc_compile("batch_norm", "compute_90", source=broken)  # the front end does not look inside asm
    with pytest.raises(KernelCompileError, match="ptxas .*Unknown modifier '.f99'"):
        nvrtc_compile("batch_norm", "sm_90", source=broken)


_NO_DRIVER_SCRIPT = """
import cupy, numpy as np
import minires as mr
import minires.nn.functional as F
try:
    gpus = cupy.cuda.runtime.getDeviceCount()
except Exception:
    gpus = 0
x = mr.tensor(np.ones((1, 2, 5, 5), np.float32), requires_grad=True)
y = F.conv2d(x, mr.ones(3, 2, 3, 3), padding=1)
y.sum().backward()
print(gpus, mr.cuda.is_available(), float(y.sum().item()), x.grad.shape)
"""


def test_cupy_without_a_gpu_leaves_import_and_the_cpu_path_alone() -> None:
    require_nvrtc()  # CuPy is installed here
    out = subprocess.run([sys.executable, "-c", _NO_DRIVER_SCRIPT], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    out = out.stdout.split()
    gpus, available = int(out[0]), out[1] == "True"
    assert available == (gpus > 0)
    # 3 output channels x 2 input channels x the in-bounds taps over a 5x5 image: (4 + 5 + 4) ** 2
    assert float(out[2]) == 3 * 2 * 13**2


def test_a_missing_toolchain_fails_in_ci_and_skips_elsewhere(monkeypatch) -> None:
    import kernel_toolchains

    monkeypatch.setitem(sys.modules, "cupy.cuda", None)  # as if CuPy (and so NVRTC) could not be imported
    monkeypatch.setattr(kernel_toolchains, "REQUIRED", True)
    with pytest.raises(pytest.fail.Exception, match="MINIRES_REQUIRE_KERNEL_CHECKS=1 but NVRTC is not available"):
        kernel_toolchains.require_nvrtc()
    monkeypatch.setattr(kernel_toolchains, "REQUIRED", False)
    with pytest.raises(pytest.skip.Exception, match="NVRTC is not available"):
        kernel_toolchains.require_nvrtc()
