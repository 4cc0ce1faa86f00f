"""The fused CuPy kernels against their generic array-module references. GPU only: every test here is
skipped without a CUDA device, and a skip is not evidence that the kernels work."""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
from minires.ops import conv
from minires.ops.cuda import fast_kernels_enabled, set_fast_kernels, use_fast_kernels

pytestmark = pytest.mark.skipif(not mr.cuda.is_available(), reason="needs a CUDA device (CuPy)")


@pytest.fixture
def generic():
    """Run the block with fast kernels off (the generic reference on the GPU)."""
    class Switch:
        def __enter__(self):
            self.before = fast_kernels_enabled()
            set_fast_kernels(False)

        def __exit__(self, *exc):
            set_fast_kernels(self.before)

    return Switch()


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
    assert use_fast_kernels(x)
    fast_cols = conv.im2col(x, k, s, p, d)
    with generic:
        ref_cols = conv.im2col(x, k, s, p, d)
    cupy.testing.assert_array_equal(fast_cols, ref_cols)
    g = cupy.asarray(np.random.default_rng(1).normal(size=ref_cols.shape).astype(dtype))
    fast_img = conv.col2im(g, shape, k, s, p, d)
    with generic:
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


@pytest.mark.parametrize("residual", [False, True])
def test_fused_bn_relu_kernels_match_generic_ops(residual: bool) -> None:
    import cupy

    from minires.ops.cuda import kernels

    rng = np.random.default_rng(3)
    x_np = rng.normal(size=(4, 6, 5, 5)).astype(np.float32)
    w_np, b_np = rng.normal(size=6).astype(np.float32), rng.normal(size=6).astype(np.float32)
    r_np = rng.normal(size=x_np.shape).astype(np.float32)
    g_np = rng.normal(size=x_np.shape).astype(np.float32)
    # reference: the generic ops on the CPU in float64
    xt = mr.tensor(x_np.astype(np.float64), requires_grad=True)
    wt = mr.tensor(w_np.astype(np.float64), requires_grad=True)
    bt = mr.tensor(b_np.astype(np.float64), requires_grad=True)
    pre = mr.nn.functional.batch_norm(xt, None, None, wt, bt, training=True, eps=1e-5)
    y_ref = mr.nn.functional.relu(pre + mr.tensor(r_np.astype(np.float64)) if residual else pre)
    y_ref.backward(mr.tensor(g_np.astype(np.float64)))
    x, w, b = cupy.asarray(x_np), cupy.asarray(w_np), cupy.asarray(b_np)
    y, mean, var, invstd = kernels.bn_train_forward(x, w, b, 1e-5, relu=True, residual=cupy.asarray(r_np) if residual else None)
    np.testing.assert_allclose(cupy.asnumpy(y), y_ref.numpy(), rtol=1e-4, atol=1e-5)
    if not residual:  # the BN backward kernel is BN's alone: feed it the gradient through the ReLU
        g = cupy.asarray(g_np) * (y > 0)
        dx, dw, db = kernels.bn_train_backward(g, x, mean, invstd, w)
        np.testing.assert_allclose(cupy.asnumpy(dx), xt.grad.numpy(), rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(cupy.asnumpy(dw), wt.grad.numpy(), rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(cupy.asnumpy(db), bt.grad.numpy(), rtol=1e-3, atol=1e-5)


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
