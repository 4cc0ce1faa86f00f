"""Layers: forward values against independent numpy oracles, BatchNorm running statistics, Dropout modes,
losses, and (where PyTorch is installed) the same layers in torch."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import minires as mr
import minires.nn as nn
import minires.nn.functional as F

RNG = np.random.default_rng(0)


def _x(*shape: int, dtype: type = np.float64) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def _t(a: np.ndarray, device: str) -> mr.Tensor:
    return mr.tensor(a).to(device)


# ----- independent numpy oracles --------------------------------------------------------------
def conv2d_loops(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int, pad: int, dil: int, groups: int) -> np.ndarray:
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - dil * (kh - 1) - 1) // stride + 1
    ow = (wd + 2 * pad - dil * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, o, oh, ow))
    og = o // groups
    for oc in range(o):
        g = oc // og
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, g * cg:(g + 1) * cg, i * stride:i * stride + dil * (kh - 1) + 1:dil,
                           j * stride:j * stride + dil * (kw - 1) + 1:dil]
                out[:, oc, i, j] = (patch * w[oc]).sum(axis=(1, 2, 3)) + (0 if b is None else b[oc])
    return out


def pool_loops(x: np.ndarray, k: int, s: int, p: int, reduce: str) -> np.ndarray:
    fill = -np.inf if reduce == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=fill)
    oh, ow = (x.shape[2] + 2 * p - k) // s + 1, (x.shape[3] + 2 * p - k) // s + 1
    out = np.zeros(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = xp[:, :, i * s:i * s + k, j * s:j * s + k]
            out[:, :, i, j] = win.max(axis=(2, 3)) if reduce == "max" else win.mean(axis=(2, 3))
    return out


def adaptive_loops(x: np.ndarray, size: tuple[int, int], reduce: str) -> np.ndarray:
    h, w = x.shape[2:]
    out = np.zeros(x.shape[:2] + size)
    for i in range(size[0]):
        for j in range(size[1]):
            r0, r1 = (i * h) // size[0], -((-(i + 1) * h) // size[0])
            c0, c1 = (j * w) // size[1], -((-(j + 1) * w) // size[1])
            win = x[:, :, r0:r1, c0:c1]
            out[:, :, i, j] = win.max(axis=(2, 3)) if reduce == "max" else win.mean(axis=(2, 3))
    return out


# ----- Linear and Conv2d ----------------------------------------------------------------------
def test_linear_matches_numpy(device: str) -> None:
    lin = nn.Linear(5, 3).double().to(device)
    x = _x(2, 4, 5)  # (*, in_features)
    w, b = lin.weight.numpy(), lin.bias.numpy()
    np.testing.assert_allclose(lin(_t(x, device)).numpy(), x @ w.T + b, rtol=1e-12)
    nobias = nn.Linear(5, 3, bias=False).double().to(device)
    assert nobias.bias is None and [n for n, _ in nobias.named_parameters()] == ["weight"]
    np.testing.assert_allclose(nobias(_t(x, device)).numpy(), x @ nobias.weight.numpy().T, rtol=1e-12)


@pytest.mark.parametrize(
    ("cin", "cout", "k", "stride", "pad", "dil", "groups", "bias"),
    [(3, 4, 3, 1, 1, 1, 1, True), (4, 6, 3, 2, 0, 1, 2, False), (2, 2, 2, 1, 2, 2, 1, True), (4, 4, 3, 1, 1, 1, 4, True)],
)
def test_conv2d_matches_loops(device: str, cin: int, cout: int, k: int, stride: int, pad: int, dil: int,
                              groups: int, bias: bool) -> None:
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dil, groups=groups, bias=bias).double()
    conv.to(device)
    x = _x(2, cin, 7, 6)
    b = conv.bias.numpy() if bias else None
    expected = conv2d_loops(x, conv.weight.numpy(), b, stride, pad, dil, groups)
    np.testing.assert_allclose(conv(_t(x, device)).numpy(), expected, rtol=1e-10, atol=1e-12)
    assert conv.weight.shape == (cout, cin // groups, k, k)


def test_conv2d_same_padding_and_backward(device: str) -> None:
    conv = nn.Conv2d(3, 5, 3, padding="same").to(device)
    assert repr(conv) == "Conv2d(3, 5, kernel_size=(3, 3), stride=(1, 1), padding=same)"
    x = _t(_x(2, 3, 6, 6, dtype=np.float32), device)
    out = conv(x)
    assert out.shape == (2, 5, 6, 6)
    out.sum().backward()
    assert conv.weight.grad.shape == conv.weight.shape
    np.testing.assert_allclose(conv.bias.grad.numpy(), np.full(5, 2 * 36.0), rtol=1e-6)


def test_conv2d_constructor_errors() -> None:
    with pytest.raises(ValueError, match=r"Conv2d: groups=2 does not divide the 3 input channels"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match=r"Conv2d: groups=2 does not divide the 3 output channels"):
        nn.Conv2d(4, 3, 3, groups=2)
    with pytest.raises(NotImplementedError, match="padding_mode='reflect'"):
        nn.Conv2d(1, 1, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="strided"):
        nn.Conv2d(1, 1, 3, stride=2, padding="same")
    assert repr(nn.Conv2d(4, 8, (1, 3), stride=2, dilation=2, groups=4)) == (
        "Conv2d(4, 8, kernel_size=(1, 3), stride=(2, 2), dilation=(2, 2), groups=4)"
    )


# ----- BatchNorm ------------------------------------------------------------------------------
def test_batchnorm2d_training_updates_running_stats(device: str) -> None:
    bn = nn.BatchNorm2d(3).double().to(device)
    x = _x(4, 3, 5, 5) * 2 + 1
    y = bn(_t(x, device)).numpy()
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(y, (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5), rtol=1e-9)
    n = 4 * 5 * 5
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), 0.9 + 0.1 * var * n / (n - 1), rtol=1e-12)  # unbiased
    assert bn.num_batches_tracked.item() == 1
    bn(_t(x, device))
    assert bn.num_batches_tracked.item() == 2
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.1 * mean + 0.9 * 0.1 * mean, rtol=1e-12)


def test_batchnorm2d_eval_uses_running_stats_and_changes_nothing(device: str) -> None:
    bn = nn.BatchNorm2d(2).double().to(device)
    bn.load_state_dict({"weight": np.array([2.0, 0.5]), "bias": np.array([1.0, -1.0]), "running_mean": np.array([0.5, -2.0]),
                        "running_var": np.array([4.0, 0.25]), "num_batches_tracked": np.array(7)})
    bn.eval()
    x = _x(3, 2, 4, 4)
    rm, rv = np.array([0.5, -2.0])[None, :, None, None], np.array([4.0, 0.25])[None, :, None, None]
    expected = (x - rm) / np.sqrt(rv + 1e-5) * np.array([2.0, 0.5])[None, :, None, None] + np.array([1.0, -1.0])[None, :, None, None]
    np.testing.assert_allclose(bn(_t(x, device)).numpy(), expected, rtol=1e-10)
    assert bn.num_batches_tracked.item() == 7
    np.testing.assert_array_equal(bn.running_mean.numpy(), [0.5, -2.0])


def test_batchnorm_momentum_none_is_cumulative_average() -> None:
    bn = nn.BatchNorm2d(2, momentum=None).double()
    batches = [_x(3, 2, 2, 2) + i for i in range(3)]
    for b in batches:
        bn(mr.tensor(b))
    np.testing.assert_allclose(bn.running_mean.numpy(), np.mean([b.mean(axis=(0, 2, 3)) for b in batches], axis=0), rtol=1e-12)
    assert bn.num_batches_tracked.item() == 3
    assert "momentum=None" in repr(bn)


def test_batchnorm_without_running_stats_or_affine() -> None:
    bn = nn.BatchNorm2d(3, affine=False, track_running_stats=False)
    assert list(bn.state_dict()) == [] and bn.running_mean is None and bn.weight is None
    x = _x(4, 3, 2, 2, dtype=np.float32)
    y_train = bn(mr.tensor(x)).numpy()
    y_eval = bn.eval()(mr.tensor(x)).numpy()  # no running stats: eval still uses the batch's
    np.testing.assert_allclose(y_eval, y_train, rtol=1e-6)
    np.testing.assert_allclose(y_eval.mean(axis=(0, 2, 3)), 0, atol=1e-5)


def test_batchnorm1d_accepts_2d_and_3d_and_checks_dims() -> None:
    bn = nn.BatchNorm1d(3).double()
    x2, x3 = _x(8, 3), _x(4, 3, 5)
    np.testing.assert_allclose(bn(mr.tensor(x2)).numpy(), (x2 - x2.mean(0)) / np.sqrt(x2.var(0) + 1e-5), rtol=1e-9)
    m3, v3 = x3.mean(axis=(0, 2), keepdims=True), x3.var(axis=(0, 2), keepdims=True)
    np.testing.assert_allclose(bn(mr.tensor(x3)).numpy(), (x3 - m3) / np.sqrt(v3 + 1e-5), rtol=1e-9)
    with pytest.raises(ValueError, match=r"expected 2D or 3D input \(got 4D input\)"):
        bn(mr.zeros(2, 3, 2, 2))
    with pytest.raises(ValueError, match=r"expected 4D input \(got 2D input\)"):
        nn.BatchNorm2d(3)(mr.zeros(2, 3))


# ----- Dropout, activations, shape layers -----------------------------------------------------
def test_dropout_respects_train_and_eval(device: str) -> None:
    drop = nn.Dropout(p=0.25).to(device)
    x = _t(np.ones((200, 100), dtype=np.float32), device)
    y = drop(x).numpy()
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01  # 20000 draws: std of the fraction is 0.003
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    drop.eval()
    np.testing.assert_array_equal(drop(x).numpy(), x.numpy())
    assert repr(drop) == "Dropout(p=0.25, inplace=False)"
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)


def test_activations_match_numpy(device: str) -> None:
    a = _x(3, 4)
    x = _t(a, device)
    np.testing.assert_array_equal(nn.ReLU()(x).numpy(), np.maximum(a, 0))
    np.testing.assert_array_equal(nn.ReLU(inplace=True)(x).numpy(), np.maximum(a, 0))
    np.testing.assert_array_equal(x.numpy(), a)  # "inplace" never mutates
    np.testing.assert_allclose(nn.LeakyReLU(0.2)(x).numpy(), np.where(a > 0, a, 0.2 * a))
    np.testing.assert_allclose(nn.Sigmoid()(x).numpy(), 1 / (1 + np.exp(-a)), rtol=1e-12)
    np.testing.assert_allclose(nn.Tanh()(x).numpy(), np.tanh(a), rtol=1e-12)
    e = np.exp(a - a.max(axis=1, keepdims=True))
    soft = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(nn.Softmax(dim=1)(x).numpy(), soft, rtol=1e-12)
    np.testing.assert_allclose(nn.LogSoftmax(dim=1)(x).numpy(), np.log(soft), rtol=1e-12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        np.testing.assert_allclose(nn.Softmax()(x).numpy(), soft, rtol=1e-12)  # 2-D: implicit dim 1
    assert any("Implicit dimension" in str(w.message) for w in caught)
    assert [repr(m) for m in (nn.ReLU(), nn.LeakyReLU(), nn.Softmax(dim=1))] == [
        "ReLU()", "LeakyReLU(negative_slope=0.01)", "Softmax(dim=1)"]
    np.testing.assert_array_equal(F.relu(x, inplace=True).numpy(), np.maximum(a, 0))


def test_flatten_and_identity(device: str) -> None:
    x = _t(_x(2, 3, 4, 5), device)
    assert nn.Flatten()(x).shape == (2, 60)
    assert nn.Flatten(0, 2)(x).shape == (24, 5)
    np.testing.assert_array_equal(nn.Flatten()(x).numpy(), x.numpy().reshape(2, 60))
    ident = nn.Identity(54, unused="ok")
    assert ident(x) is x and repr(ident) == "Identity()"


# ----- pooling --------------------------------------------------------------------------------
def test_max_and_avg_pool_match_loops(device: str) -> None:
    a = _x(2, 3, 9, 8)
    x = _t(a, device)
    pool = nn.MaxPool2d(3, stride=2, padding=1)
    assert repr(pool) == "MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False)"
    np.testing.assert_array_equal(pool(x).numpy(), pool_loops(a, 3, 2, 1, "max"))
    avg = nn.AvgPool2d(2)
    assert avg.stride == 2 and repr(avg) == "AvgPool2d(kernel_size=2, stride=2, padding=0)"
    np.testing.assert_allclose(avg(x).numpy(), pool_loops(a, 2, 2, 0, "avg"), rtol=1e-12)
    np.testing.assert_allclose(nn.AvgPool2d(2, divisor_override=1)(x).numpy(), pool_loops(a, 2, 2, 0, "avg") * 4, rtol=1e-12)
    values, indices = nn.MaxPool2d(2, return_indices=True)(x)
    np.testing.assert_array_equal(values.numpy(), pool_loops(a, 2, 2, 0, "max"))
    assert indices.shape == values.shape


@pytest.mark.parametrize("size", [(1, 1), (3, 3), (4, 2)])
def test_adaptive_pools_match_loops(device: str, size: tuple[int, int]) -> None:
    a = _x(2, 3, 7, 5)
    x = _t(a, device)
    np.testing.assert_allclose(nn.AdaptiveAvgPool2d(size)(x).numpy(), adaptive_loops(a, size, "avg"), rtol=1e-12)
    np.testing.assert_array_equal(nn.AdaptiveMaxPool2d(size)(x).numpy(), adaptive_loops(a, size, "max"))
    assert repr(nn.AdaptiveAvgPool2d(size)) == f"AdaptiveAvgPool2d(output_size={size})"


# ----- losses ---------------------------------------------------------------------------------
def test_losses_match_numpy(device: str) -> None:
    logits, target = _x(6, 4), np.array([0, 3, 1, 1, 2, 0])
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    picked = -log_p[np.arange(6), target]
    x, t = _t(logits, device), _t(target, device)
    assert nn.CrossEntropyLoss()(x, t).item() == pytest.approx(picked.mean(), rel=1e-10)
    assert nn.CrossEntropyLoss(reduction="sum")(x, t).item() == pytest.approx(picked.sum(), rel=1e-10)
    w = np.array([1.0, 2.0, 0.5, 3.0])
    weighted = nn.CrossEntropyLoss(weight=mr.tensor(w)).to(device)
    assert weighted.weight.device == device and list(weighted.state_dict()) == ["weight"]
    assert weighted(x, t).item() == pytest.approx((w[target] * picked).sum() / w[target].sum(), rel=1e-10)
    assert nn.NLLLoss()(_t(log_p, device), t).item() == pytest.approx(picked.mean(), rel=1e-10)
    ignored = target.copy()
    ignored[0] = -100
    assert nn.NLLLoss()(_t(log_p, device), _t(ignored, device)).item() == pytest.approx(picked[1:].mean(), rel=1e-10)
    smooth = (1 - 0.1) * picked + 0.1 * (-log_p.mean(axis=1))
    assert nn.CrossEntropyLoss(label_smoothing=0.1)(x, t).item() == pytest.approx(smooth.mean(), rel=1e-10)
    y = _x(6, 4)
    assert nn.MSELoss()(x, _t(y, device)).item() == pytest.approx(((logits - y) ** 2).mean(), rel=1e-10)
    np.testing.assert_allclose(nn.MSELoss(reduction="none")(x, _t(y, device)).numpy(), (logits - y) ** 2, rtol=1e-12)
    assert repr(nn.CrossEntropyLoss()) == "CrossEntropyLoss()"
    with pytest.raises(ValueError, match="reduction"):
        nn.MSELoss(reduction="avg")


# ----- PyTorch, where installed ---------------------------------------------------------------
def test_layers_agree_with_torch_in_training() -> None:
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    torch.manual_seed(0)
    pairs = [
        (tnn.BatchNorm2d(4, momentum=0.3), nn.BatchNorm2d(4, momentum=0.3)),
        (tnn.BatchNorm2d(4, momentum=None), nn.BatchNorm2d(4, momentum=None)),
        (tnn.MaxPool2d(3, 2, 1), nn.MaxPool2d(3, 2, 1)),
        (tnn.AvgPool2d(3, 2, 1, count_include_pad=False), nn.AvgPool2d(3, 2, 1, count_include_pad=False)),
        (tnn.AdaptiveAvgPool2d((3, 2)), nn.AdaptiveAvgPool2d((3, 2))),
        (tnn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)),
    ]
    for tm, m in pairs:
        m.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
        assert repr(m) == repr(tm)
        for step in range(3):
            a = np.random.default_rng(step).standard_normal((5, 4, 7, 7)).astype(np.float32) * 2 + 1
            expected = tm(torch.from_numpy(a)).detach().numpy()
            np.testing.assert_allclose(m(mr.tensor(a)).numpy(), expected, rtol=1e-4, atol=1e-5, err_msg=repr(m))
        for key, value in tm.state_dict().items():
            np.testing.assert_allclose(m.state_dict()[key].numpy(), value.numpy(), rtol=1e-5, err_msg=f"{m} {key}")


def test_default_init_distribution_matches_torch_bounds() -> None:
    torch = pytest.importorskip("torch")
    for tm, m in [(torch.nn.Conv2d(6, 8, 3, groups=2), nn.Conv2d(6, 8, 3, groups=2)), (torch.nn.Linear(7, 9), nn.Linear(7, 9))]:
        for (name, tp), (_, p) in zip(tm.named_parameters(), m.named_parameters()):
            bound = math.sqrt(1 / (tm.weight[0].numel()))
            assert tp.abs().max().item() <= bound and np.abs(p.numpy()).max() <= bound, name
