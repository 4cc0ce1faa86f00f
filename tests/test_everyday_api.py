"""The everyday API a PyTorch user reaches for: std/var(correction=), clone, flip, gather/scatter_add,
isfinite/isnan, mr.pow, F.one_hot, layer_norm/group_norm (and their modules),
Module.register_full_backward_hook, t.to(dtype). Forward values are checked against direct NumPy
code (loops where NumPy has no one-liner), gradients against finite differences (mr.gradcheck, float64);
torch, when installed, is an extra oracle."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minires as mr
import minires.nn as nn
import minires.nn.functional as F
from minires.testing import float_arrays, shapes

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None


FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def leaf(x, device: str) -> mr.Tensor:
    return mr.tensor(np.asarray(x, dtype=np.float64), device=device, requires_grad=True)


@st.composite
def array_and_dim(draw, min_dims=1, max_dims=3):
    shape = draw(shapes(min_dims=min_dims, max_dims=max_dims, max_side=4))
    return draw(float_arrays(shape)), draw(st.integers(-len(shape), len(shape) - 1))


# ----- std / var ----------------------------------------------------------------------------------------
@FIXTURE_OK
@given(ad=array_and_dim(), correction=st.integers(0, 2), keepdim=st.booleans())
def test_var_and_std_with_correction(device, ad, correction, keepdim):
    x, dim = ad
    n = x.shape[dim]
    if n - correction <= 0:
        return
    t = leaf(x, device)
    mean = x.mean(axis=dim, keepdims=True)
    expected = ((x - mean) ** 2).sum(axis=dim, keepdims=keepdim) / (n - correction)
    np.testing.assert_allclose(t.var(dim, keepdim, correction=correction).numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(t.std(dim, keepdim, correction=correction).numpy(), np.sqrt(expected), rtol=1e-10, atol=1e-12)
    assert mr.gradcheck(lambda v: v.var(dim, keepdim, correction=correction), [t])
    if np.all(expected > 1e-3):  # std has a kink where the spread is 0
        assert mr.gradcheck(lambda v: mr.std(v, dim, keepdim, correction=correction), [t])


def test_var_argument_errors():
    x = mr.ones(3)
    with pytest.raises(TypeError, match="unbiased or correction, not both"):
        x.var(unbiased=True, correction=1)
    with pytest.raises(ValueError, match="correction must be a non-negative int"):
        x.var(correction=-1)
    assert x.var(unbiased=False).item() == x.var(correction=0).item() == 0.0


# ----- clone, flip ----------------------------------------------------------------------------------------
def test_clone_copies_and_passes_the_gradient(device):
    x = leaf([1.0, 2.0], device)
    c = x.clone()
    assert c.data is not x.data and not np.shares_memory(c.numpy(), x.numpy()) or device != "cpu"
    (c * c).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0])
    with mr.no_grad():
        c.add_(1)
    np.testing.assert_allclose(x.numpy(), [1.0, 2.0])


@FIXTURE_OK
@given(x=float_arrays(shapes(min_dims=1, max_dims=3, max_side=4)), data=st.data())
def test_flip(device, x, data):
    dims = data.draw(st.lists(st.integers(0, x.ndim - 1), min_size=1, max_size=x.ndim, unique=True))
    t = leaf(x, device)
    expected = x.copy()
    for d in dims:  # reverse one axis at a time by explicit index lists
        index = [slice(None)] * x.ndim
        index[d] = list(range(x.shape[d] - 1, -1, -1))
        expected = expected[tuple(index)]
    np.testing.assert_array_equal(mr.flip(t, dims).numpy(), expected)
    np.testing.assert_array_equal(t.flip(*dims).numpy(), expected)
    weights = mr.tensor(np.arange(x.size, dtype=np.float64).reshape(x.shape), device=device)  # tells positions apart
    assert mr.gradcheck(lambda v: mr.flip(v, dims) * weights, [t])


# ----- gather / scatter_add --------------------------------------------------------------------------------
@st.composite
def gather_case(draw):
    shape = draw(shapes(min_dims=1, max_dims=3, max_side=4))
    dim = draw(st.integers(0, len(shape) - 1))
    index_shape = tuple(draw(st.integers(1, n)) if d != dim else draw(st.integers(1, 5)) for d, n in enumerate(shape))
    index = draw(st.lists(st.integers(0, shape[dim] - 1), min_size=int(np.prod(index_shape)), max_size=int(np.prod(index_shape))))
    return draw(float_arrays(shape)), dim, np.array(index, dtype=np.int64).reshape(index_shape)


def _gather_loops(x, dim, index):
    out = np.zeros(index.shape)
    for pos in itertools.product(*map(range, index.shape)):
        src = list(pos)
        src[dim] = index[pos]
        out[pos] = x[tuple(src)]
    return out


def _scatter_add_loops(x, dim, index, src):
    out = x.copy()
    for pos in itertools.product(*map(range, index.shape)):
        dst = list(pos)
        dst[dim] = index[pos]
        out[tuple(dst)] += src[pos]
    return out


@FIXTURE_OK
@given(case=gather_case())
def test_gather(device, case):
    x, dim, index = case
    t = leaf(x, device)
    idx = mr.tensor(index, device=device)
    np.testing.assert_array_equal(t.gather(dim, idx).numpy(), _gather_loops(x, dim, index))
    assert mr.gradcheck(lambda v: mr.gather(v, dim, idx), [t])
    if torch is not None:
        np.testing.assert_array_equal(
            t.gather(dim, idx).numpy(), torch.gather(torch.from_numpy(x), dim, torch.from_numpy(index)).numpy()
        )


@FIXTURE_OK
@given(case=gather_case(), data=st.data())
def test_scatter_add(device, case, data):
    x, dim, index = case
    src = data.draw(float_arrays(index.shape))
    t, s = leaf(x, device), leaf(src, device)
    idx = mr.tensor(index, device=device)
    np.testing.assert_allclose(t.scatter_add(dim, idx, s).numpy(), _scatter_add_loops(x, dim, index, src), rtol=1e-12)
    assert mr.gradcheck(lambda a, b: mr.scatter_add(a, dim, idx, b), [t, s])


def test_gather_and_scatter_add_errors():
    x = mr.zeros(2, 3)
    with pytest.raises(TypeError, match="gather: index must be an integer tensor"):
        x.gather(1, mr.zeros(2, 3))
    with pytest.raises(IndexError, match=r"gather: index values must be in \[0, 3\)"):
        x.gather(1, mr.tensor([[0, 3]]))
    with pytest.raises(ValueError, match="gather: index has 1 dims"):
        x.gather(1, mr.tensor([0]))
    with pytest.raises(ValueError, match="scatter_add: index shape .* larger than the src shape"):
        x.scatter_add(1, mr.tensor([[0, 1]]), mr.ones(1, 1))


# ----- isfinite / isnan / pow / one_hot ---------------------------------------------------------------------
def test_isfinite_isnan(device):
    values = np.array([0.0, np.inf, -np.inf, np.nan, 1.5])
    t = mr.tensor(values, device=device)
    np.testing.assert_array_equal(t.isfinite().numpy(), [True, False, False, False, True])
    np.testing.assert_array_equal(mr.isnan(t).numpy(), [False, False, False, True, False])
    assert t.isnan().dtype == mr.bool_


@FIXTURE_OK
@given(a=float_arrays((2, 3), low=0.5, high=2.0), b=float_arrays((3,), low=-2.0, high=2.0))
def test_pow(device, a, b):
    ta, tb = leaf(a, device), leaf(b, device)
    np.testing.assert_allclose(mr.pow(ta, tb).numpy(), np.exp(b * np.log(a)), rtol=1e-12)
    np.testing.assert_allclose(ta.pow(2).numpy(), a * a, rtol=1e-12)
    assert mr.gradcheck(mr.pow, [ta, tb])


def test_one_hot(device):
    target = mr.tensor([[2, 0], [1, 2]], device=device)
    out = F.one_hot(target)
    expected = np.zeros((2, 2, 3), dtype=np.int64)
    for i, j in itertools.product(range(2), range(2)):
        expected[i, j, target.numpy()[i, j]] = 1
    assert out.dtype == mr.int64
    np.testing.assert_array_equal(out.numpy(), expected)
    assert F.one_hot(target, num_classes=5).shape == (2, 2, 5)
    with pytest.raises(ValueError, match="one_hot: class value 2 is too large for num_classes=2"):
        F.one_hot(target, num_classes=2)
    with pytest.raises(TypeError, match="integer tensor"):
        F.one_hot(mr.ones(2))


# ----- layer_norm / group_norm --------------------------------------------------------------------------------
def _normalized(x, axes, eps):
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


@FIXTURE_OK
@given(x=float_arrays(shapes(min_dims=2, max_dims=4, min_side=2, max_side=4)), k=st.integers(1, 2), data=st.data())
def test_layer_norm(device, x, k, data):
    k = min(k, x.ndim)
    shape = x.shape[x.ndim - k :]
    w, b = data.draw(float_arrays(shape)), data.draw(float_arrays(shape))
    t, tw, tb = leaf(x, device), leaf(w, device), leaf(b, device)
    expected = _normalized(x, tuple(range(x.ndim - k, x.ndim)), 1e-5) * w + b
    np.testing.assert_allclose(F.layer_norm(t, shape, tw, tb).numpy(), expected, rtol=1e-9, atol=1e-9)
    assert mr.gradcheck(lambda a, c, d: F.layer_norm(a, shape, c, d), [t, tw, tb], atol=1e-5)


@FIXTURE_OK
@given(
    n=st.integers(1, 2), groups=st.integers(1, 3), per_group=st.integers(1, 2),
    spatial=shapes(min_dims=0, max_dims=2, min_side=1, max_side=3), data=st.data(),
)
def test_group_norm(device, n, groups, per_group, spatial, data):
    c = groups * per_group
    x = data.draw(float_arrays((n, c, *spatial)))
    if x.reshape(n, groups, -1).shape[2] < 2:
        return  # one value per group: the normalised output is 0 and var + eps is a constant
    w, b = data.draw(float_arrays((c,))), data.draw(float_arrays((c,)))
    t, tw, tb = leaf(x, device), leaf(w, device), leaf(b, device)
    grouped = x.reshape(n, groups, -1)
    per_channel = (c,) + (1,) * len(spatial)
    expected = _normalized(grouped, (2,), 1e-5).reshape(x.shape) * w.reshape(per_channel) + b.reshape(per_channel)
    np.testing.assert_allclose(F.group_norm(t, groups, tw, tb).numpy(), expected, rtol=1e-9, atol=1e-9)
    assert mr.gradcheck(lambda a, d, e: F.group_norm(a, groups, d, e), [t, tw, tb], atol=1e-5)


def test_norm_modules_match_torch():
    if torch is None:
        pytest.skip("torch is not installed")
    x = np.random.default_rng(0).standard_normal((2, 6, 3, 3))
    for ours, theirs in (
        (nn.LayerNorm([3, 3]).double(), torch.nn.LayerNorm([3, 3]).double()),
        (nn.GroupNorm(3, 6).double(), torch.nn.GroupNorm(3, 6).double()),
    ):
        with torch.no_grad():
            for p in theirs.parameters():
                p.uniform_(0.5, 1.5)
        ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
        np.testing.assert_allclose(ours(mr.tensor(x)).numpy(), theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
    assert repr(nn.GroupNorm(3, 6)) == "GroupNorm(3, 6, eps=1e-05, affine=True)"


def test_norm_errors():
    with pytest.raises(ValueError, match="layer_norm: normalized_shape .* must match the last dims"):
        F.layer_norm(mr.ones(2, 3), (4,))
    with pytest.raises(ValueError, match="group_norm: num_groups must be a positive divisor of the 6 channels"):
        F.group_norm(mr.ones(2, 6, 2), 4)
    with pytest.raises(ValueError, match="GroupNorm: num_channels"):
        nn.GroupNorm(4, 6)


# ----- full backward hooks --------------------------------------------------------------------------------------
def test_full_backward_hook_sees_input_and_output_gradients(device):
    layer = nn.Linear(3, 2).double().to(device)
    seen = []
    layer.register_full_backward_hook(lambda m, gi, go: seen.append((m, gi, go)))
    x = leaf(np.arange(6.0).reshape(2, 3), device)
    y = layer(x)
    (y * mr.tensor([[1.0, 2.0]], dtype=mr.float64, device=device)).sum().backward()
    ((module, grad_input, grad_output),) = seen
    assert module is layer
    np.testing.assert_allclose(grad_output[0].numpy(), [[1.0, 2.0], [1.0, 2.0]])
    w = layer.weight.numpy()
    np.testing.assert_allclose(grad_input[0].numpy(), np.array([[1.0, 2.0], [1.0, 2.0]]) @ w)
    np.testing.assert_allclose(x.grad.numpy(), grad_input[0].numpy())


def test_full_backward_hook_can_replace_grad_input(device):
    layer = nn.ReLU()
    handle = layer.register_full_backward_hook(lambda m, gi, go: (gi[0] * 0 + 7,))
    x = leaf([1.0, -1.0], device)
    layer(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [7.0, 7.0])
    handle.remove()
    x.grad = None
    layer(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0, 0.0])


def test_full_backward_hook_without_input_grad_still_runs(device):
    layer = nn.Linear(2, 1).to(device)
    seen = []
    layer.register_full_backward_hook(lambda m, gi, go: seen.append(gi))
    layer(mr.ones(1, 2, device=device)).sum().backward()
    assert seen == [(None,)]
    assert layer.weight.grad is not None


# ----- to(dtype) ----------------------------------------------------------------------------------------------
def test_to_dtype_positional_or_string(device):
    t = mr.ones(2, device=device, requires_grad=True)
    for spec, expected in ((mr.float64, mr.float64), ("float64", mr.float64), ("double", mr.float64),
                           ("torch.float16", mr.float16), (np.float16, mr.float16), ("half", mr.float16)):
        assert t.to(spec).dtype == expected, spec
    assert t.to(device, "float64").dtype == mr.float64
    assert t.to(mr.zeros(1, dtype=mr.float64, device=device)).dtype == mr.float64
    t.to("float64").sum().backward()
    assert t.grad.dtype == mr.float32
    with pytest.raises(TypeError, match="not a dtype"):
        t.to(device, "floaty")
