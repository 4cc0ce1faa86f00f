"""conv2d, im2col and col2im: values against a direct loop oracle, gradients against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minires as mr
from minires.backend import to_numpy
from minires.ops.conv import col2im, conv2d, im2col
from minires.testing import conv_configs, conv_output_size

# the `device` fixture only returns a string, so reusing it across hypothesis examples is safe
FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def conv2d_loops(x, w, b, stride, pads, dilation, groups):
    """The definition, one output value at a time (float64). pads = (top, bottom, left, right)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    pt, pb, pl, pr = pads
    xp = np.zeros((n, c, h + pt + pb, wd + pl + pr))
    xp[:, :, pt : pt + h, pl : pl + wd] = x
    oh = (h + pt + pb - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + pl + pr - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    og = o // groups
    out = np.zeros((n, o, oh, ow))
    for ni in range(n):
        for oi in range(o):
            g = oi // og
            for y in range(oh):
                for z in range(ow):
                    total = 0.0 if b is None else b[oi]
                    for ci in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                total += (
                                    w[oi, ci, i, j]
                                    * xp[ni, g * cg + ci, y * stride[0] + i * dilation[0], z * stride[1] + j * dilation[1]]
                                )
                    out[ni, oi, y, z] = total
    return out


def _t(a, device, requires_grad=False):
    return mr.tensor(a, device=device, requires_grad=requires_grad)


def _draw(cfg, seed, bias=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(cfg.input_shape)
    w = rng.standard_normal(cfg.weight_shape)
    b = rng.standard_normal(cfg.out_channels) if bias else None
    return x, w, b


@settings(FIXTURE_OK, max_examples=60)
@given(conv_configs(), st.integers(0, 2**16), st.booleans())
def test_conv2d_matches_loop_oracle(device, cfg, seed, bias):
    x, w, b = _draw(cfg, seed, bias)
    y = conv2d(_t(x, device), _t(w, device), None if b is None else _t(b, device), cfg.stride, cfg.padding, cfg.dilation, cfg.groups)
    pads = (cfg.padding[0], cfg.padding[0], cfg.padding[1], cfg.padding[1])
    expected = conv2d_loops(x, w, b, cfg.stride, pads, cfg.dilation, cfg.groups)
    assert y.shape == cfg.output_shape == expected.shape
    np.testing.assert_allclose(to_numpy(y.data), expected, rtol=1e-10, atol=1e-10)


@settings(FIXTURE_OK, max_examples=40)
@given(conv_configs(max_batch=2, max_channels=4, max_size=5, max_padding=1), st.integers(0, 2**16))
def test_conv2d_gradcheck(device, cfg, seed):
    x, w, b = _draw(cfg, seed)
    inputs = [_t(x, device, True), _t(w, device, True), _t(b, device, True)]
    assert mr.gradcheck(lambda a, k, c: conv2d(a, k, c, cfg.stride, cfg.padding, cfg.dilation, cfg.groups), inputs)


@settings(FIXTURE_OK, max_examples=40)
@given(conv_configs(max_size=6), st.integers(0, 2**16))
def test_im2col_col2im_are_adjoint(device, cfg, seed):
    """<im2col(x), c> == <x, col2im(c)> for every geometry: col2im is the exact transpose."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(cfg.input_shape)
    args = (cfg.kernel_size, cfg.stride, cfg.padding, cfg.dilation)
    cols = im2col(_t(x, device).data, *args)
    c = rng.standard_normal(cols.shape)
    back = to_numpy(col2im(_t(c, device).data, cfg.input_shape, *args))
    assert back.shape == cfg.input_shape
    np.testing.assert_allclose(np.sum(to_numpy(cols) * c), np.sum(x * back), rtol=1e-10)


@given(conv_configs(max_groups=1), st.integers(0, 2**16))
def test_im2col_layout_is_as_documented(cfg, seed):
    x = np.random.default_rng(seed).standard_normal(cfg.input_shape)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = cfg.kernel_size, cfg.stride, cfg.padding, cfg.dilation
    n, c, h, w = cfg.input_shape
    oh, ow = cfg.output_shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    expected = np.empty((n, oh, ow, kh, kw, c))
    for y in range(oh):
        for z in range(ow):
            for i in range(kh):
                for j in range(kw):
                    expected[:, y, z, i, j, :] = xp[:, :, y * sh + i * dh, z * sw + j * dw]
    cols = im2col(x, cfg.kernel_size, cfg.stride, cfg.padding, cfg.dilation)
    assert cols.shape == (n * oh * ow, kh * kw * c) and cols.flags.c_contiguous
    np.testing.assert_array_equal(cols, expected.reshape(n * oh * ow, -1))


@FIXTURE_OK
@given(conv_configs(), st.integers(0, 2**16))
def test_float32_agrees_with_float64(device, cfg, seed):
    """float32 within 1e-4 relative to the output scale (products summed over <= 36 terms)."""
    x, w, b = _draw(cfg, seed)
    args = (cfg.stride, cfg.padding, cfg.dilation, cfg.groups)
    tensors64 = [_t(a, device, True) for a in (x, w, b)]
    tensors32 = [_t(a.astype(np.float32), device, True) for a in (x, w, b)]
    y64, y32 = conv2d(*tensors64, *args), conv2d(*tensors32, *args)
    assert y32.dtype == np.float32
    g = np.random.default_rng(seed + 1).standard_normal(y64.shape)
    y64.backward(_t(g, device))
    y32.backward(_t(g.astype(np.float32), device))
    for a64, a32 in [(y64, y32)] + [(t64.grad, t32.grad) for t64, t32 in zip(tensors64, tensors32)]:
        ref = to_numpy(a64.data)
        assert a32.dtype == np.float32
        np.testing.assert_allclose(to_numpy(a32.data), ref, rtol=1e-4, atol=1e-4 * (1 + np.abs(ref).max()))


@pytest.mark.parametrize("kernel,dilation", [((3, 3), 1), ((2, 4), 1), ((3, 2), 2), ((1, 1), 1)])
def test_padding_same_keeps_the_size(device, kernel, dilation):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 5, 6)), rng.standard_normal((4, 3, *kernel))
    y = conv2d(_t(x, device), _t(w, device), padding="same", dilation=dilation)
    assert y.shape == (2, 4, 5, 6)
    # PyTorch puts the odd extra padding at the bottom/right
    th, tw = dilation * (kernel[0] - 1), dilation * (kernel[1] - 1)
    pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    expected = conv2d_loops(x, w, None, (1, 1), pads, (dilation, dilation), 1)
    np.testing.assert_allclose(to_numpy(y.data), expected, atol=1e-10)
    xt, wt = _t(x, device, True), _t(w, device, True)
    assert mr.gradcheck(lambda a, k: conv2d(a, k, padding="same", dilation=dilation), [xt, wt], fast_mode=True)


def test_padding_valid_is_zero_padding(device):
    rng = np.random.default_rng(1)
    x, w = _t(rng.standard_normal((1, 2, 6, 5)), device), _t(rng.standard_normal((3, 2, 3, 3)), device)
    np.testing.assert_array_equal(to_numpy(conv2d(x, w, padding="valid").data), to_numpy(conv2d(x, w, padding=0).data))


def test_unbatched_input(device):
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    y = conv2d(_t(x, device), _t(w, device), padding=1)
    assert y.shape == (3, 5, 5)
    np.testing.assert_allclose(to_numpy(y.data), conv2d_loops(x[None], w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1)[0], atol=1e-10)


def test_channels_last_input_gives_the_same_result(device):
    """Inputs in any memory layout (conv2d's own output is channels-last) give the same values."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 6))
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    w = _t(rng.standard_normal((4, 3, 3, 3)), device)
    a = conv2d(_t(x, device), w, stride=2, padding=1)
    b = conv2d(mr.Tensor(_t(x_cl, device).data), w, stride=2, padding=1)
    np.testing.assert_allclose(to_numpy(a.data), to_numpy(b.data), atol=1e-12)
    two = conv2d(a, _t(rng.standard_normal((2, 4, 1, 1)), device))  # a 1x1 conv on a channels-last output
    assert two.shape == (2, 2, 3, 3)


def test_no_grad_for_constant_weight_or_input(device):
    rng = np.random.default_rng(4)
    x = _t(rng.standard_normal((1, 2, 4, 4)), device, True)
    w = _t(rng.standard_normal((3, 2, 3, 3)), device)
    conv2d(x, w).sum().backward()
    assert x.grad is not None and w.grad is None
    x2 = _t(rng.standard_normal((1, 2, 4, 4)), device)
    w2 = _t(rng.standard_normal((3, 2, 3, 3)), device, True)
    conv2d(x2, w2).sum().backward()
    assert w2.grad is not None and x2.grad is None


@pytest.mark.parametrize(
    "xs,ws,kwargs,error,match",
    [
        (
            (1, 3, 5, 5),
            (8, 4, 3, 3),
            {},
            ValueError,
            r"conv2d: input has 3 channels, weight expects 4 \(weight shape \(8, 4, 3, 3\)\)",
        ),
        (
            (1, 4, 5, 5),
            (8, 1, 3, 3),
            {"groups": 2},
            ValueError,
            r"conv2d: input has 4 channels, weight expects 2 \(1 per group x 2 groups\)",
        ),
        ((1, 3, 5, 5), (6, 1, 3, 3), {"groups": 2}, ValueError, r"conv2d: groups=2 does not divide the 3 input channels \("),
        ((1, 4, 5, 5), (5, 2, 3, 3), {"groups": 2}, ValueError, r"conv2d: groups=2 does not divide the 5 output channels"),
        ((1, 4, 5, 5), (4, 4, 3, 3), {"groups": 0}, ValueError, r"conv2d: groups must be a positive int"),
        (
            (1, 2, 2, 2),
            (3, 2, 3, 3),
            {},
            ValueError,
            r"conv2d: input size \(2, 2\) \(padded \(2, 2\)\) is smaller than the dilated kernel \(3, 3\)",
        ),
        (
            (1, 2, 4, 4),
            (3, 2, 3, 3),
            {"dilation": 2},
            ValueError,
            r"smaller than the dilated kernel \(5, 5\) \(kernel \(3, 3\), dilation \(2, 2\)\)",
        ),
        ((2, 5, 5), (3, 2, 3, 3, 1), {}, ValueError, r"conv2d: expected a 4-D weight"),
        ((5, 5), (3, 1, 3, 3), {}, ValueError, r"conv2d: expected a 4-D input \(N, C, H, W\)"),
        ((1, 2, 5, 5), (3, 2, 3, 3), {"stride": 2, "padding": "same"}, ValueError, r"padding='same' is not supported for strided"),
        (
            (1, 2, 5, 5),
            (3, 2, 3, 3),
            {"padding": "full"},
            ValueError,
            r"conv2d: padding must be an int, a pair of ints, 'same' or 'valid'",
        ),
        ((1, 2, 5, 5), (3, 2, 3, 3), {"stride": 0}, ValueError, r"conv2d: stride must be >= 1"),
        ((1, 2, 5, 5), (3, 2, 3, 3), {"padding": -1}, ValueError, r"conv2d: padding must be >= 0"),
        ((1, 2, 5, 5), (3, 2, 3, 3), {"dilation": (1, 2, 3)}, ValueError, r"conv2d: dilation must be an int or a pair"),
    ],
)
def test_errors(device, xs, ws, kwargs, error, match):
    x, w = mr.zeros(xs, device=device), mr.zeros(ws, device=device)
    with pytest.raises(error, match=match):
        conv2d(x, w, **kwargs)


def test_dtype_and_bias_errors(device):
    x = mr.zeros((1, 2, 5, 5), device=device)
    w = mr.zeros((3, 2, 3, 3), device=device)
    with pytest.raises(TypeError, match=r"conv2d: input dtype float32 and weight dtype float64 differ"):
        conv2d(x, w.double())
    with pytest.raises(ValueError, match=r"conv2d: bias must have shape \(3,\)"):
        conv2d(x, w, mr.zeros(4, device=device))
    with pytest.raises(TypeError, match=r"conv2d: bias dtype float64 differs"):
        conv2d(x, w, mr.zeros(3, device=device).double())
    with pytest.raises(TypeError, match=r"conv2d: expected a floating-point tensor"):
        conv2d(mr.zeros((1, 2, 5, 5), device=device).long(), w)


def test_im2col_col2im_errors():
    with pytest.raises(ValueError, match=r"im2col: expected a 4-D"):
        im2col(np.zeros((2, 5, 5)), 3)
    with pytest.raises(ValueError, match=r"col2im: expected columns of shape \(9, 18\)"):
        col2im(np.zeros((9, 17)), (1, 2, 5, 5), 3)
    with pytest.raises(ValueError, match=r"im2col: input size \(2, 2\)"):
        im2col(np.zeros((1, 1, 2, 2)), 3)


def test_output_size_rule_matches_the_documented_formula():
    for size, k, s, p, d in [(7, 3, 2, 1, 1), (8, 3, 3, 0, 2), (5, 1, 2, 0, 1), (32, 3, 2, 1, 1)]:
        y = conv2d(mr.zeros((1, 1, size, size)), mr.zeros((1, 1, k, k)), stride=s, padding=p, dilation=d)
        assert y.shape[2] == (size + 2 * p - d * (k - 1) - 1) // s + 1 == conv_output_size(size, k, s, p, d)


@settings(FIXTURE_OK, max_examples=10)
@given(conv_configs(max_channels=6, max_groups=3), st.integers(0, 2**16))
def test_matches_torch(cfg, seed):
    torch = pytest.importorskip("torch")
    x, w, b = _draw(cfg, seed)
    args = (cfg.stride, cfg.padding, cfg.dilation, cfg.groups)
    ts = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    ms = [mr.tensor(a, requires_grad=True) for a in (x, w, b)]
    ty, my = torch.nn.functional.conv2d(*ts, *args), conv2d(*ms, *args)
    g = np.random.default_rng(seed).standard_normal(my.shape)
    ty.backward(torch.tensor(g))
    my.backward(mr.tensor(g))
    np.testing.assert_allclose(my.numpy(), ty.detach().numpy(), atol=1e-10)
    for m, t in zip(ms, ts):
        np.testing.assert_allclose(m.grad.numpy(), t.grad.numpy(), atol=1e-10)


@pytest.mark.parametrize("channels, groups, stride, dilation", [(64, 1, 2, 1), (64, 1, 1, 2), (128, 2, 2, 2), (16, 1, 2, 1)])
def test_input_gradient_is_the_adjoint_of_the_convolution(channels, groups, stride, dilation):
    """<conv(z), g> == <z, dL/dx> for any z (conv is linear in x): an oracle that needs no loops, used
    here for the wide layers (64+ channels per group) whose input gradient takes the one-GEMM fold."""
    rng = np.random.default_rng(channels + stride)
    x, w = rng.standard_normal((2, channels, 7, 6)), rng.standard_normal((8, channels // groups, 3, 3))
    kwargs = {"stride": stride, "padding": 1, "dilation": dilation, "groups": groups}
    xt = mr.tensor(x, requires_grad=True)
    y = conv2d(xt, mr.tensor(w), **kwargs)
    g = rng.standard_normal(y.shape)
    y.backward(mr.tensor(g))
    z = rng.standard_normal(x.shape)
    lhs = float(np.vdot(conv2d(mr.tensor(z), mr.tensor(w), **kwargs).numpy(), g))
    assert lhs == pytest.approx(float(np.vdot(z, xt.grad.numpy())), rel=1e-12)
