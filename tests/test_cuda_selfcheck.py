"""First-use self-check and fallback of the fast kernels, exercised on the CPU.

The pretend GPU (the foreign test device) gets a host launcher (tests/cuda_host.py) that builds the kernel
source with g++; swapping in a broken source (one that does not compile, or one with an index off by one)
or a launcher that fails must switch that kernel off with one warning, and the op must still return the
generic path's result.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from cuda_host import HostLauncher, host_kernels
from kernel_toolchains import require_host_compiler

import minires as mr
import minires.nn.functional as F
from minires.ops.cuda import selfcheck, set_fast_kernels, sources, use_fast_kernels
from minires.ops.cuda.selfcheck import FastKernelWarning

MISSING_SEMICOLON = sources.IM2COL.replace("t /= g.kW;", "t /= g.kW", 1)
OFF_BY_ONE = sources.IM2COL.replace("x = ox * g.sW - g.pL + kj * g.dW;", "x = ox * g.sW - g.pL + kj * g.dW + 1;")


@pytest.fixture(autouse=True)
def _compiler() -> None:
    require_host_compiler()


def _conv_on(device: str, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """conv2d forward and input gradient on a device, as host arrays."""
    xt = mr.tensor(x, device=device, requires_grad=True)
    y = F.conv2d(xt, mr.tensor(w, device=device), stride=2, padding=1)
    (y * y).sum().backward()
    return y.numpy(), xt.grad.numpy()


def _case() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(2, 3, 7, 6)), rng.normal(size=(4, 3, 3, 3))


def test_good_kernels_pass_their_self_check_and_run() -> None:
    x, w = _case()
    want = _conv_on("cpu", x, w)
    with host_kernels() as launcher, warnings.catch_warnings():
        warnings.simplefilter("error", FastKernelWarning)
        got = _conv_on("foreign", x, w)
        verdicts = selfcheck.results()
    assert verdicts[("im2col", "float64", "foreign")][0] and verdicts[("col2im", "float64", "foreign")][0]
    assert launcher.launches.count("minires_im2col_f64") == 2  # the self-check, then the convolution
    assert launcher.launches.count("minires_col2im_f64") == 2
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("broken, cause", [(MISSING_SEMICOLON, "HostBuildError"), (OFF_BY_ONE, "differ from the generic path")])
def test_a_broken_kernel_is_switched_off_with_one_warning(broken: str, cause: str) -> None:
    assert broken != sources.IM2COL
    x, w = _case()
    want = _conv_on("cpu", x, w)
    with host_kernels(HostLauncher(sources={"im2col": broken})) as launcher:
        message = rf"fast 'im2col' kernel failed its first-use self-check for float64.*{cause}"
        with pytest.warns(FastKernelWarning, match=message) as caught:
            got = _conv_on("foreign", x, w)
        assert len([w for w in caught if issubclass(w.category, FastKernelWarning)]) == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error", FastKernelWarning)  # no second warning
            again = _conv_on("foreign", x, w)
        verdicts = selfcheck.results()
    assert verdicts[("im2col", "float64", "foreign")][0] is False
    assert verdicts[("col2im", "float64", "foreign")][0] is True  # only the broken family is off
    assert "minires_col2im_f64" in launcher.launches
    for result in (got, again):  # the run continued on the generic path, with the right answer
        for a, b in zip(result, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_a_failing_launch_switches_the_kernel_off() -> None:
    def failing(family, entry, total, args):
        raise RuntimeError("CUDA_ERROR_LAUNCH_FAILED (a fake launcher)")

    with host_kernels(failing):
        x = mr.tensor(np.ones((1, 2, 4, 4), np.float32), device="foreign")
        with pytest.warns(FastKernelWarning, match="CUDA_ERROR_LAUNCH_FAILED"):
            y = F.conv2d(x, mr.tensor(np.ones((1, 2, 3, 3), np.float32), device="foreign"), padding=1)
        assert y.numpy()[0, 0, 1, 1] == 18  # generic path: 2 channels x 9 taps of ones
        assert not use_fast_kernels(x.data, "im2col")


def test_self_check_runs_once_per_dtype() -> None:
    with host_kernels() as launcher:
        for dtype in (np.float32, np.float32, np.float16, np.float64):
            x = mr.tensor(np.ones((1, 1, 3, 3), dtype), device="foreign")
            assert use_fast_kernels(x.data, "im2col")
        checked = sorted(key[1] for key in selfcheck.results())
    assert checked == ["float16", "float32", "float64"]
    assert launcher.launches == ["minires_im2col_f32", "minires_im2col_f16", "minires_im2col_f64"]


def test_switched_off_fast_kernels_never_launch() -> None:
    def refuse(family, entry, total, args):
        raise AssertionError("a fast kernel ran while fast kernels were off")

    x, w = _case()
    with host_kernels(refuse):
        set_fast_kernels(False)
        try:
            got = _conv_on("foreign", x, w)
        finally:
            set_fast_kernels(True)
        assert selfcheck.results() == {}
        assert not use_fast_kernels(mr.tensor(np.ones(3, np.int64), device="foreign").data, "im2col")  # no int kernels
    np.testing.assert_allclose(got[0], _conv_on("cpu", x, w)[0], rtol=1e-12)


def test_environment_variable_turns_fast_kernels_off() -> None:
    code = "from minires.ops.cuda import fast_kernels_enabled; print(fast_kernels_enabled())"
    env = dict(os.environ, MINIRES_FAST_KERNELS="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
