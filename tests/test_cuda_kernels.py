"""The fast CUDA kernels against their generic array-module references, on a real GPU. Every test here is
skipped without a CUDA device, and a skip is not evidence that the kernels work: without a GPU the same
kernel source is compiled by NVRTC (tests/test_cuda_compile.py) and its logic runs on the CPU
(tests/test_cuda_host.py)."""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
from minires.ops import conv
from minires.ops.cuda import fast_kernels_off, selfcheck, use_fast_kernels

pytestmark = [pytest.mark.device, pytest.mark.skipif(not mr.cuda.is_available(), reason="needs a CUDA device (CuPy)")]


@pytest.fixture
def generic():
    """``with generic():`` runs the block with fast kernels off (the generic reference on the GPU)."""
    return fast_kernels_off


CASES = [  # (N, C, H, W), kernel, stride, padding, dilation
    ((2, 3, 7, 6), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((2, 5, 9, 8), (3, 2), (2, 1), (0, 2), (1, 2)),
    ((1, 4, 8, 8), (1, 1), (2, 2), (0, 0), (1, 1)),
    ((3, 16, 12, 12), (5, 5), (2, 3), (2, 1), (2, 1)),
]


@pytest.mark.parametrize("shape, k, s, p, d", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_im2col_col2im_kernels_match_reference(shape, k, s, p, d, dtype, generic) -> None:
    import cupy

    x = cupy.asarray(np.random.default_rng(0).normal(size=shape).astype(dtype))
    assert use_fast_kernels(x, "im2col") and use_fast_kernels(x, "col2im"), selfcheck.results()
    fast_cols = conv.im2col(x, k, s, p, d)
    with generic():
        ref_cols = conv.im2col(x, k, s, p, d)
    cupy.testing.assert_array_equal(fast_cols, ref_cols)
    g = cupy.asarray(np.random.default_rng(1).normal(size=ref_cols.shape).astype(dtype))
    fast_img = conv.col2im(g, shape, k, s, p, d)
    with generic():
        ref_img = conv.col2im(g, shape, k, s, p, d)
    cupy.testing.assert_allclose(fast_img, ref_img, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-6)
    again = conv.col2im(g, shape, k, s, p, d)
    cupy.testing.assert_array_equal(again, fast_img)  # deterministic: the gather has no atomics


def test_conv2d_on_gpu_matches_cpu_float64() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 9, 9))
    w = rng.normal(size=(4, 3, 3, 3))
    outs, grads = [], []
    for dev in ("cpu", "cuda"):
        xt = mr.tensor(x, device=dev, requires_grad=True)
        wt = mr.tensor(w, device=dev, requires_grad=True)
        y = mr.nn.functional.conv2d(xt, wt, stride=2, padding=1)
        (y * y).sum().backward()
        outs.append(y.numpy())
        grads.append((xt.grad.numpy(), wt.grad.numpy()))
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-10)
    for a, b in zip(grads[0], grads[1]):
        np.testing.assert_allclose(b, a, rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_every_kernel_passes_its_self_check_on_this_gpu(dtype) -> None:
    for family in selfcheck.CHECKS:
        assert selfcheck.passed(family, dtype, "cuda"), selfcheck.results()


def test_tf32_switch_keeps_float32_gemm_close() -> None:
    import cupy

    a = cupy.asarray(np.random.default_rng(4).normal(size=(256, 256)).astype(np.float32))
    exact = cupy.asnumpy(a).astype(np.float64) @ cupy.asnumpy(a).astype(np.float64)
    mr.cuda.set_tf32(True)
    try:
        np.testing.assert_allclose(cupy.asnumpy(a @ a), exact, rtol=5e-2, atol=5e-2)
    finally:
        mr.cuda.set_tf32(False)
    np.testing.assert_allclose(cupy.asnumpy(a @ a), exact, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
def test_fused_batch_norm_add_relu_matches_the_generic_gpu_path(dtype, training, generic) -> None:
    import minires.nn.functional as F

    rng = np.random.default_rng(5)
    arrays = [rng.normal(size=(4, 6, 5, 5)).astype(dtype) for _ in range(3)]
    w, b, rm, rv = (rng.uniform(0.5, 1.5, size=6).astype(dtype) for _ in range(4))

    def run() -> list[np.ndarray]:
        x, r = (mr.tensor(a, device="cuda", requires_grad=True) for a in arrays[:2])
        wt, bt = (mr.tensor(a, device="cuda", requires_grad=True) for a in (w, b))
        stats = [mr.tensor(a.copy(), device="cuda") for a in (rm, rv)]
        y = F.batch_norm_add_relu(x, r, *stats, wt, bt, training=training)
        (y * mr.tensor(arrays[2], device="cuda")).sum().backward()
        return [y.numpy(), x.grad.numpy(), r.grad.numpy(), wt.grad.numpy(), bt.grad.numpy(), *(s.numpy() for s in stats)]

    fast = run()
    with generic():
        reference = run()
    tol = {np.float16: dict(rtol=2e-2, atol=2e-2), np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-10)}[dtype]
    for a, e in zip(fast, reference):
        np.testing.assert_allclose(a.astype(np.float64), e.astype(np.float64), **tol)


def test_resnet20_step_with_and_without_fast_kernels_agree(generic) -> None:
    import copy

    import minires.nn.functional as F
    from minires.models import resnet20

    mr.manual_seed(0)
    model = resnet20().to("cuda", dtype=np.float64)
    x = mr.tensor(np.random.default_rng(6).normal(size=(4, 3, 32, 32)), device="cuda")
    y = mr.tensor(np.arange(4) % 10, device="cuda")

    def step(m) -> list[np.ndarray]:
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        return [loss.numpy()] + [p.grad.numpy() for p in m.parameters()]

    fast = step(copy.deepcopy(model))
    with generic():
        reference = step(copy.deepcopy(model))
    for a, e in zip(fast, reference):
        np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-11)
