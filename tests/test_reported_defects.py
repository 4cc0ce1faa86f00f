"""One test per defect reported in issue 10 (each failed before its fix): losses with every target
ignored, conv2d on an empty batch and with an empty kernel, custom backward returning a Tensor,
damaged and foreign files, file modes, dtype promotion with 0-d tensors, amax over an empty dim,
var of one element, where with a float condition, object arrays, gradcheck's stray .grad, and warnings
from sqrt at 0 and from log_softmax of an all -inf row."""

from __future__ import annotations

import os
import stat
import warnings
import zipfile

import numpy as np
import pytest

import minires as mr
import minires.nn as nn
import minires.nn.functional as F
from minires.training import save_checkpoint

try:
    import torch as _torch
except ImportError:  # pragma: no cover - torch is an optional oracle here
    _torch = None


# ----- losses with every target ignored -------------------------------------------------------------
@pytest.mark.parametrize("loss", ["cross_entropy", "nll_loss"])
@pytest.mark.parametrize(("reduction", "expected"), [("mean", np.nan), ("sum", 0.0)])
def test_all_targets_ignored_gives_zero_gradient(loss, reduction, expected, device):
    x = mr.tensor(np.random.default_rng(0).standard_normal((3, 4)), device=device, requires_grad=True)
    target = mr.tensor([-100, -100, -100], device=device)
    out = getattr(F, loss)(x, target, reduction=reduction)
    np.testing.assert_equal(out.item(), expected)
    out.backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros((3, 4)))


def test_all_ignored_with_label_smoothing_matches_torch(device):
    if _torch is None:
        pytest.skip("torch is not installed")
    logits = np.random.default_rng(1).standard_normal((2, 5))
    x = mr.tensor(logits, device=device, requires_grad=True)
    out = F.cross_entropy(x, mr.tensor([3, 3], device=device), ignore_index=3, label_smoothing=0.1)
    out.backward()
    tx = _torch.tensor(logits, requires_grad=True)
    tout = _torch.nn.functional.cross_entropy(tx, _torch.tensor([3, 3]), ignore_index=3, label_smoothing=0.1)
    tout.backward()
    np.testing.assert_equal(out.item(), tout.item())
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())


# ----- conv2d -------------------------------------------------------------------------------------------
def test_conv2d_on_an_empty_batch_has_a_backward(device):
    x = mr.zeros(0, 2, 5, 5, dtype=mr.float64, device=device, requires_grad=True)
    w = mr.randn(3, 2, 3, 3, dtype=mr.float64, device=device, requires_grad=True)
    b = mr.zeros(3, dtype=mr.float64, device=device, requires_grad=True)
    y = F.conv2d(x, w, b, padding=1, stride=2)
    assert y.shape == (0, 3, 3, 3)
    y.sum().backward()
    assert x.grad.shape == (0, 2, 5, 5)
    np.testing.assert_array_equal(w.grad.numpy(), np.zeros((3, 2, 3, 3)))
    np.testing.assert_array_equal(b.grad.numpy(), np.zeros(3))


def test_conv2d_kernel_of_size_zero_is_an_error(device):
    x = mr.zeros(1, 2, 5, 5, device=device)
    with pytest.raises(ValueError, match=r"conv2d: kernel size must be at least 1x1, got 0x3"):
        F.conv2d(x, mr.zeros(3, 2, 0, 3, device=device))


# ----- custom Function returning a Tensor -----------------------------------------------------------------
def test_custom_backward_may_return_a_tensor(device):
    class Cube(mr.Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a**3

        @staticmethod
        def backward(ctx, g):
            (a,) = ctx.saved_tensors
            return mr.tensor(3 * a * a * g)

    x = mr.tensor([1.0, -2.0], dtype=mr.float64, device=device, requires_grad=True)
    Cube.apply(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 12.0])


def test_custom_backward_returning_a_number_names_the_op():
    class Bad(mr.Function):
        @staticmethod
        def forward(ctx, a):
            return a * 2

        @staticmethod
        def backward(ctx, g):
            return 2.0

    x = mr.tensor([1.0], requires_grad=True)
    with pytest.raises(TypeError, match="Bad.backward returned a float; expected an array or Tensor"):
        Bad.apply(x).sum().backward()


# ----- files ---------------------------------------------------------------------------------------------
def test_load_of_a_damaged_compressed_file_names_the_file(tmp_path):
    path = tmp_path / "damaged.npz"
    np.savez_compressed(path, w=np.random.default_rng(0).standard_normal(20000))
    with zipfile.ZipFile(path) as archive:
        entry = archive.infolist()[0]
    start = entry.header_offset + 30 + len(entry.filename) + len(entry.extra)  # the compressed stream
    raw = bytearray(path.read_bytes())
    raw[start + 100 : start + 108] = b"\xff" * 8  # an invalid deflate stream: zlib.error inside numpy
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"load: '.*damaged\.npz' is not a readable \.npz file"):
        mr.load(path)


def test_load_tree_on_a_state_dict_says_what_it_is(tmp_path):
    path = tmp_path / "weights.npz"
    mr.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(ValueError, match=r"holds 2 plain arrays such as 'weight'.*mr\.load\(path\)"):
        mr.load_tree(path)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        mr.save({"w": np.zeros(2)}, tmp_path / "a.npz")
        mr.save_tree({"w": np.zeros(2), "n": 1}, tmp_path / "b.npz")
        save_checkpoint(tmp_path / "checkpoint.npz", {"w": np.zeros(2)}, epoch=1)
    finally:
        os.umask(old)
    for name in ("a.npz", "b.npz", "checkpoint.npz"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~umask, name


# ----- dtypes and small semantics ----------------------------------------------------------------------------
def test_zero_dim_float64_does_not_widen_a_float32_tensor(device):
    a = mr.ones(3, device=device, requires_grad=True)
    s = mr.tensor(2.0, dtype=mr.float64, device=device, requires_grad=True)
    for out in (a + s, s * a, a - s, a / s):
        assert out.dtype == mr.float32
    (a * s).sum().backward()
    assert s.grad.dtype == mr.float64 and s.grad.item() == 3.0
    assert (mr.ones(3, dtype=mr.int32, device=device) + mr.tensor(2, device=device)).dtype == mr.int32
    # both 0-d, or both with dims: numpy's (and PyTorch's) widening stays
    assert (mr.tensor(1.0, device=device) + mr.tensor(2.0, dtype=mr.float64, device=device)).dtype == mr.float64
    assert (mr.ones(2, device=device) + mr.ones(2, dtype=mr.float64, device=device)).dtype == mr.float64


def test_amax_over_an_empty_dim(device):
    x = mr.zeros(0, 3, device=device)
    assert x.amax(1).shape == (0,)
    assert x.amin(1, keepdim=True).shape == (0, 1)
    with pytest.raises(ValueError, match="amax: cannot reduce dim 0 of size 0"):
        x.amax(0)


def test_var_of_one_element_is_nan_with_a_warning(device):
    x = mr.tensor([1.5], device=device, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="degrees of freedom"):
        v = x.var()
    assert np.isnan(v.item())
    assert x.var(correction=0).item() == 0.0


def test_where_refuses_a_float_condition(device):
    with pytest.raises(TypeError, match="where: the condition must be a bool tensor, got dtype float32"):
        mr.where(mr.ones(2, device=device), mr.ones(2, device=device), mr.zeros(2, device=device))


def test_object_arrays_are_refused():
    with pytest.raises(TypeError, match="object"):
        mr.tensor(np.array([None, 1]))
    with pytest.raises(TypeError, match="object"):
        mr.as_tensor(np.array([None, 1]))
    with pytest.raises(TypeError, match="dtype"):
        mr.Tensor(np.array(["a"]))


def test_gradcheck_leaves_module_parameters_alone():
    m = nn.Linear(3, 2).double()
    x = mr.randn(4, 3, dtype=mr.float64, requires_grad=True)
    assert mr.gradcheck(lambda t: m(t), [x])
    assert m.weight.grad is None and m.bias.grad is None
    m(x).sum().backward()
    kept = m.weight.grad.numpy().copy()
    assert mr.gradcheck(lambda t: m(t).tanh(), [x])
    np.testing.assert_array_equal(m.weight.grad.numpy(), kept)


def test_no_runtime_warnings_from_sqrt_at_zero_or_an_all_minus_inf_row(device):
    if device != "cpu":
        pytest.skip("numpy's warnings: CuPy never warns (the foreign test device runs numpy underneath and does)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = mr.tensor([0.0, 4.0], device=device, requires_grad=True)
        x.sqrt().sum().backward()
        assert np.isinf(x.grad.numpy()[0]) and x.grad.numpy()[1] == 0.25
        row = mr.tensor([[-np.inf, -np.inf], [0.0, 1.0]], device=device, requires_grad=True)
        out = F.log_softmax(row, dim=1)
        assert np.all(np.isnan(out.numpy()[0]))
        out[1].sum().backward()
        F.softmax(row, dim=1)
