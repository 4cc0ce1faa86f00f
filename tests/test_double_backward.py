"""Order-2 checks of every op's differentiable backward, in float64, inputs kept off kinks and ties.

Each op is checked twice: ``mr.gradgradcheck`` (the Jacobian of the first-order gradient, with
respect to the inputs and the output gradients, against finite differences) and JAX-style
``check_grads(order=2, modes=("fwd", "rev"))`` (jvp by the double-vjp trick, the vjp transpose
identity, and both again on the derivative functions).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minires as mr
import minires.nn.functional as F
from minires.testing import (
    ConvConfig,
    arrays_away_from,
    arrays_without_ties,
    broadcastable_shapes,
    check_grads,
    conv_configs,
    float_arrays,
    pool_configs,
    shapes,
)

SMALL = shapes(min_dims=1, max_dims=3, max_side=3)
MATRIX = shapes(min_dims=2, max_dims=2, max_side=3)
FEW = settings(max_examples=6)
ORDER2 = settings(max_examples=10)  # each example runs two full order-2 checks


def leaf(a: np.ndarray) -> mr.Tensor:
    return mr.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def order_two(fn: Callable[..., Any], *arrays: np.ndarray, fast: bool = False) -> None:
    """Both order-2 checks; either raises GradcheckError on a wrong second derivative."""
    assert mr.gradgradcheck(fn, [leaf(a) for a in arrays], fast_mode=fast)
    check_grads(fn, [leaf(a) for a in arrays], order=2)


# ----- elementwise ----------------------------------------------------------------------------
@ORDER2
@given(shapes_=broadcastable_shapes(2, max_dims=3, max_side=3), data=st.data())
def test_arithmetic(shapes_: Any, data: st.DataObject) -> None:
    a = data.draw(float_arrays(shapes_[0]))
    b = data.draw(arrays_away_from(shapes_[1], kinks=(0.0,), margin=0.3))
    order_two(lambda x, y: x * y + x / y - y * (x - y) * x, a, b)


@ORDER2
@given(x=float_arrays(SMALL, 0.3, 2.0), y=arrays_away_from(SMALL, kinks=(0.0,), margin=0.05, low=-2.0, high=2.0))
def test_pow_with_tensor_exponent(x: np.ndarray, y: np.ndarray) -> None:
    y = np.resize(y, x.shape)  # off b == 0, where d/da is defined as 0 (PyTorch's convention)
    order_two(lambda a, b: a**b + a**2.5, x, y)


@ORDER2
@given(x=float_arrays(SMALL, 0.2, 2.0))
def test_exp_log_sqrt(x: np.ndarray) -> None:
    order_two(lambda a: a.exp() * a.log() + a.sqrt() / a - (-a).exp(), x)


@ORDER2
@given(x=arrays_away_from(SMALL, kinks=(0.0, -1.0, 1.0), margin=0.05))
def test_piecewise_abs_clamp_relu_leaky(x: np.ndarray) -> None:
    # piecewise linear pieces, each times x so that the second derivative is not trivially zero
    order_two(lambda a: (a.abs() + a.clamp(-1.0, 1.0) + a.relu() + F.leaky_relu(a, 0.2)) * a, x)


@ORDER2
@given(data=st.data())
def test_maximum_minimum_where(data: st.DataObject) -> None:
    both = data.draw(arrays_without_ties(st.just((2, 3, 2)), gap=0.05))
    a, b = both[0], both[1]
    cond = data.draw(float_arrays((3, 2))) > 0
    order_two(lambda x, y: mr.maximum(x, y) * x + mr.minimum(x, y) * y + mr.where(cond, x * y, y * y), a, b)


@ORDER2
@given(x=float_arrays(SMALL))
def test_smooth_activations(x: np.ndarray) -> None:
    order_two(lambda a: mr.sigmoid(a) * mr.tanh(a) + mr.sigmoid(a * a), x)


@ORDER2
@given(x=float_arrays(MATRIX), dim=st.sampled_from([0, 1, -1]))
def test_softmax_log_softmax(x: np.ndarray, dim: int) -> None:
    order_two(lambda a: mr.softmax(a, dim) * a + mr.log_softmax(a, dim) ** 2, x)


# ----- reductions -------------------------------------------------------------------------------
@ORDER2
@given(x=float_arrays(shapes(min_dims=2, max_dims=3, min_side=2, max_side=3)), keep=st.booleans())
def test_sum_mean_var(x: np.ndarray, keep: bool) -> None:
    def f(a: mr.Tensor) -> mr.Tensor:
        return a.sum(0, keepdim=keep) ** 2 + a.mean(-1, keepdim=keep).exp().sum() + a.var(1, keepdim=keep).sum() * a.sum()

    order_two(f, x)


@ORDER2
@given(x=arrays_without_ties(shapes(min_dims=2, max_dims=3, max_side=3), gap=0.05), keep=st.booleans())
def test_amax_and_max_along_dim(x: np.ndarray, keep: bool) -> None:
    def f(a: mr.Tensor) -> tuple[mr.Tensor, mr.Tensor, mr.Tensor]:
        return a.amax(0, keepdim=keep) ** 2, a.max(-1, keepdim=keep).values ** 3, a.min(0).values * a.max()

    order_two(f, x)


# ----- shape ops and indexing ------------------------------------------------------------------
@ORDER2
@given(x=float_arrays(shapes(min_dims=2, max_dims=2, min_side=2, max_side=3)))
def test_shape_ops(x: np.ndarray) -> None:
    def f(a: mr.Tensor) -> mr.Tensor:
        r, c = a.shape
        moved = a.transpose(0, 1).reshape(c * r).unsqueeze(0).expand(2, c * r)
        joined = mr.cat([a, a * a], dim=1) + 0
        stacked = mr.stack([a, a.exp()], dim=0)
        return (moved**2).sum() + (joined * joined.sum()).sum() + mr.pad(a * a, (1, 2)).sum() * stacked.sum()

    order_two(f, x)


@ORDER2
@given(x=float_arrays((4, 3)))
def test_getitem_basic_and_advanced(x: np.ndarray) -> None:
    rows = np.array([0, 2, 2, 3])  # repeated rows: the scatter accumulates
    order_two(lambda a: a[1:, ::2] ** 2 + a[rows][:3, :2] * a[0, 1] + a[..., None][2] .sum(), x)


# ----- matmul and linear --------------------------------------------------------------------------
MATMUL_CASES = [((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 2)), ((2, 2, 3), (3, 2)), ((1, 2, 3), (2, 3, 2))]


@ORDER2
@given(case=st.sampled_from(MATMUL_CASES), data=st.data())
def test_matmul(case: Any, data: st.DataObject) -> None:
    a = data.draw(float_arrays(case[0]))
    b = data.draw(float_arrays(case[1]))
    order_two(lambda x, y: (x @ y) ** 2 + (x @ y).tanh(), a, b)


@ORDER2
@given(x=float_arrays((2, 3)), w=float_arrays((4, 3)), b=float_arrays((4,)))
def test_linear(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> None:
    order_two(lambda x_, w_, b_: F.linear(x_, w_, b_).tanh() * F.linear(x_, w_), x, w, b)


# ----- losses ---------------------------------------------------------------------------------------
@FEW
@given(
    logits=float_arrays((4, 3)),
    smoothing=st.sampled_from([0.0, 0.2]),
    weighted=st.booleans(),
    reduction=st.sampled_from(["mean", "sum", "none"]),
)
def test_cross_entropy(logits: np.ndarray, smoothing: float, weighted: bool, reduction: str) -> None:
    target = mr.tensor([0, 2, -100, 1])  # one ignored
    weight = mr.tensor([0.5, 1.0, 2.0], dtype=mr.float64) if weighted else None
    order_two(lambda z: F.cross_entropy(z, target, weight=weight, label_smoothing=smoothing, reduction=reduction), logits)


@FEW
@given(logits=float_arrays((2, 3, 2, 2)))
def test_cross_entropy_spatial(logits: np.ndarray) -> None:
    target = mr.tensor(np.array([[[0, 1], [2, 1]], [[1, 1], [0, -100]]]))
    order_two(lambda z: F.cross_entropy(z, target, label_smoothing=0.1), logits)


@ORDER2
@given(x=float_arrays((3, 4)), reduction=st.sampled_from(["mean", "sum", "none"]))
def test_nll_loss(x: np.ndarray, reduction: str) -> None:
    target = mr.tensor([1, -100, 3])
    order_two(lambda z: F.nll_loss(F.log_softmax(z, 1), target, reduction=reduction), x)


@ORDER2
@given(x=float_arrays((2, 3)), y=float_arrays((2, 3)), reduction=st.sampled_from(["mean", "sum", "none"]))
def test_mse_loss(x: np.ndarray, y: np.ndarray, reduction: str) -> None:
    order_two(lambda a, b: F.mse_loss(a.tanh(), b, reduction=reduction), x, y)


# ----- dropout --------------------------------------------------------------------------------------
@ORDER2
@given(x=float_arrays((3, 4)))
def test_dropout_mask_is_a_constant(x: np.ndarray) -> None:
    def f(a: mr.Tensor) -> mr.Tensor:
        mr.manual_seed(3)  # the same mask on every call, as the finite differences need
        return F.dropout(a * a, 0.4, training=True) * a

    order_two(f, x)
    assert mr.gradgradcheck(lambda a: F.dropout(a * a, 1.0) + a * a, [leaf(x)])


# ----- a custom Function ----------------------------------------------------------------------------
class Cube(mr.Function):
    differentiable_backward = True

    @staticmethod
    def forward(ctx: mr.Context, x: Any) -> Any:
        ctx.save_for_backward(x)
        return x * x * x

    @staticmethod
    def backward(ctx: mr.Context, g: Any) -> Any:
        (x,) = ctx.saved_tensors
        return 3 * x * x * g


class OnceDifferentiable(mr.Function):
    @staticmethod
    def forward(ctx: mr.Context, x: Any) -> Any:
        ctx.save_for_backward(x)
        return np.sin(x)

    @staticmethod
    def backward(ctx: mr.Context, g: Any) -> Any:
        (x,) = ctx.saved_tensors
        return g * np.cos(x)


class SavesIntermediate(mr.Function):
    differentiable_backward = True

    @staticmethod
    def forward(ctx: mr.Context, x: Any) -> Any:
        y = x * x
        ctx.save_for_backward(y)  # depends on x, but the engine cannot know how
        return y * x

    @staticmethod
    def backward(ctx: mr.Context, g: Any) -> Any:
        (y,) = ctx.saved_tensors
        return 3 * y * g


@ORDER2
@given(x=float_arrays(SMALL))
def test_custom_function_opting_in(x: np.ndarray) -> None:
    order_two(lambda a: Cube.apply(a), x)


def test_custom_function_without_opt_in_is_refused_by_name() -> None:
    x = leaf(np.array([0.5, 1.0]))
    (g,) = mr.autograd.grad(OnceDifferentiable.apply(x).sum(), x)  # first order: fine
    np.testing.assert_allclose(g.numpy(), np.cos([0.5, 1.0]))
    with pytest.raises(RuntimeError, match="OnceDifferentiable has no differentiable backward.*backward_graph"):
        mr.autograd.grad(OnceDifferentiable.apply(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="SavesIntermediate: saved value 0 is a floating-point array"):
        SavesIntermediate.apply(x).sum().backward(create_graph=True)


# ----- batch norm -------------------------------------------------------------------------------------
@FEW
@given(
    x=arrays_without_ties(st.just((3, 2, 2, 2)), gap=0.1), w=float_arrays((2,), 0.5, 1.5), b=float_arrays((2,)), train=st.booleans()
)
def test_batch_norm_train_and_eval(x: np.ndarray, w: np.ndarray, b: np.ndarray, train: bool) -> None:
    stats = (mr.tensor(np.array([0.3, -0.2])), mr.tensor(np.array([0.8, 1.7]))) if not train else (None, None)
    order_two(lambda a, w_, b_: F.batch_norm(a, *stats, w_, b_, training=train).tanh(), x, w, b)


@FEW
@given(x=arrays_without_ties(st.just((4, 3)), gap=0.1))  # distinct values: no channel of near-zero variance
def test_batch_norm_without_affine_on_2d_input(x: np.ndarray) -> None:
    order_two(lambda a: F.batch_norm(a, None, None, training=True) ** 3, x)


# ----- convolution --------------------------------------------------------------------------------------
@FEW
@given(cfg=conv_configs(max_channels=4, max_size=6), bias=st.booleans(), data=st.data())
def test_conv2d_any_geometry(cfg: ConvConfig, bias: bool, data: st.DataObject) -> None:
    x = data.draw(float_arrays(cfg.input_shape))
    w = data.draw(float_arrays(cfg.weight_shape))
    b = data.draw(float_arrays((cfg.out_channels,)))
    kw = dict(stride=cfg.stride, padding=cfg.padding, dilation=cfg.dilation, groups=cfg.groups)
    # tanh makes the output nonlinear in (x, w): d2/dx dw and the second derivatives through tanh
    order_two(lambda x_, w_, b_: F.conv2d(x_, w_, b_ if bias else None, **kw).tanh() * (b_ * b_).sum(), x, w, b)


@FEW
@given(kernel=st.sampled_from([(2, 2), (2, 3), (3, 3)]), data=st.data())
def test_conv2d_same_padding_asymmetric(kernel: tuple[int, int], data: st.DataObject) -> None:
    x = data.draw(float_arrays((1, 2, 4, 5)))
    w = data.draw(float_arrays((2, 2, *kernel)))
    order_two(lambda x_, w_: F.conv2d(x_, w_, padding="same").tanh(), x, w)


# ----- pooling ------------------------------------------------------------------------------------------
@FEW
@given(cfg=pool_configs(max_size=6), data=st.data())
def test_max_pool2d(cfg: Any, data: st.DataObject) -> None:
    x = data.draw(arrays_without_ties(st.just(cfg.input_shape), gap=0.05))
    kw = dict(kernel_size=cfg.kernel_size, stride=cfg.stride, padding=cfg.padding, dilation=cfg.dilation, ceil_mode=cfg.ceil_mode)
    order_two(lambda a: F.max_pool2d(a * a.abs(), **kw) ** 2, x)  # a|a| keeps the order: no new ties


@FEW
@given(cfg=pool_configs(max_size=6), include_pad=st.booleans(), data=st.data())
def test_avg_pool2d(cfg: Any, include_pad: bool, data: st.DataObject) -> None:
    x = data.draw(float_arrays(cfg.input_shape))
    kw = dict(kernel_size=cfg.kernel_size, stride=cfg.stride, padding=cfg.padding, ceil_mode=cfg.ceil_mode)
    kw["count_include_pad"] = include_pad
    order_two(lambda a: F.avg_pool2d(a.tanh(), **kw) ** 2, x)


@FEW
@given(out=st.sampled_from([1, 2, (2, 3), (3, 1)]), data=st.data())
def test_adaptive_pools(out: Any, data: st.DataObject) -> None:
    x = data.draw(arrays_without_ties(st.just((2, 2, 5, 4)), gap=0.05))
    order_two(lambda a: F.adaptive_avg_pool2d(a * a, out) ** 2 + F.adaptive_max_pool2d(a * a.abs(), out) ** 3, x)


def test_every_built_in_function_is_twice_differentiable() -> None:
    """A guard for new ops: each Function in minires opts in to create_graph (backward_graph, or a
    backward written with operations Tensors share)."""
    import importlib
    import pkgutil

    import minires

    for info in pkgutil.walk_packages(minires.__path__, "minires."):
        if "cuda" not in info.name:
            importlib.import_module(info.name)

    def subclasses(cls: type) -> list[type]:
        return [c for s in cls.__subclasses__() for c in (s, *subclasses(s))]

    found = [c for c in subclasses(mr.Function) if c.__module__.startswith("minires.")]
    assert len(found) > 40
    missing = [c.__qualname__ for c in found if c.backward_graph is None and not c.differentiable_backward]
    # first order only, by design: SyncBatchNorm's double backward would need a differentiable all-reduce;
    # the full-backward-hook identities hand the module's hooks raw gradients (they raise by name under create_graph)
    assert sorted(missing) == ["SyncBatchNormFunction", "_Identity", "_InputsIdentity", "_OutputsIdentity"]


def test_an_op_without_second_derivative_says_so() -> None:
    from minires.distributed.sync_batchnorm import sync_batch_norm

    x = leaf(np.random.default_rng(0).standard_normal((4, 2)))
    y = (sync_batch_norm(x, None, None) ** 3).sum()
    (g,) = mr.autograd.grad(y, x, retain_graph=True)  # first order works (one process)
    assert g.shape == (4, 2)
    with pytest.raises(RuntimeError, match="SyncBatchNorm has no differentiable backward"):
        mr.autograd.grad(y, x, create_graph=True)


def test_planted_bugs_in_second_derivatives_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    from minires.ops import conv_grad, pooling

    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((3, 2, 3, 3))

    def conv(a: mr.Tensor, b: mr.Tensor) -> mr.Tensor:
        return F.conv2d(a, b, padding=1).tanh()

    # the transposed convolution's raw backward drops its weight term: gradgradcheck sees it
    raw = conv_grad.Conv2dInputGradFunction.backward
    without_weight_term = staticmethod(lambda ctx, g: (raw(ctx, g)[0], None, None, None, None))
    monkeypatch.setattr(conv_grad.Conv2dInputGradFunction, "backward", without_weight_term)
    with pytest.raises(mr.GradcheckError):
        mr.gradgradcheck(conv, [leaf(x), leaf(w)])
    monkeypatch.undo()
    # its differentiable backward (third order) drops the weight term: check_grads(order=2) recurses into it
    graph = conv_grad.Conv2dInputGradFunction.backward_graph
    monkeypatch.setattr(
        conv_grad.Conv2dInputGradFunction, "backward_graph", staticmethod(lambda ctx, g: (graph(ctx, g)[0], None, None, None, None))
    )
    with pytest.raises(mr.GradcheckError):
        check_grads(conv, [leaf(x), leaf(w)], order=2)
    monkeypatch.undo()
    # max-pool's double backward gathers at the wrong window offset
    gather = pooling._gather_by_window_offset
    monkeypatch.setattr(pooling, "_gather_by_window_offset", lambda u, arg, window: gather(u, (arg + 1) % 4, window))
    with pytest.raises(mr.GradcheckError):
        mr.gradgradcheck(lambda a: F.max_pool2d(a, 2) ** 2, [leaf(rng.permutation(32).reshape(1, 2, 4, 4) * 0.1)])


@FEW
@given(x=arrays_without_ties(st.just((3, 2, 2, 2)), gap=0.1), r=float_arrays((3, 2, 2, 2)), train=st.booleans())
def test_fused_batch_norm_add_relu(x: np.ndarray, r: np.ndarray, train: bool) -> None:
    from minires.ops.normalization import batch_norm_add_relu

    stats = (mr.tensor(np.array([0.3, -0.2])), mr.tensor(np.array([0.8, 1.7]))) if not train else (None, None)
    pre = F.batch_norm(leaf(x), *stats, leaf(np.array([0.9, 1.2])), leaf(np.array([0.1, -0.3])), training=train).detach().numpy() + r
    assume(float(np.abs(pre).min()) > 1e-3)  # off the ReLU's kink
    w, b = np.array([0.9, 1.2]), np.array([0.1, -0.3])
    order_two(lambda a, res, w_, b_: batch_norm_add_relu(a, res, *stats, w_, b_, training=train) ** 2, x, r, w, b)
