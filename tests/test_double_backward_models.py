"""Order-2 checks through whole residual blocks and a small ResNet, in float64: gradgradcheck
(the first-order gradients' Jacobian against finite differences, fast mode over every parameter)
and check_grads(order=2) over the input, in train (BatchNorm batch statistics) and eval mode."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_model_gradients import BLOCK_CASES, kink_margin, leaf_input, make_block

import minires as mr
from minires import models
from minires.testing import check_grads, float_arrays


def away_from_kinks(model: mr.nn.Module, shape: tuple[int, ...], margin: float) -> mr.Tensor:
    for seed in range(20):
        x = leaf_input(shape, seed)
        if kink_margin(model, x) > margin:
            return x
    pytest.fail(f"no input among 20 seeds keeps every ReLU {margin} away from its kink")


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(("kind", "projection"), BLOCK_CASES)
def test_block_second_order(kind: str, projection: bool, train: bool) -> None:
    block, shape = make_block(kind, projection)
    block.train(train)
    params = list(block.parameters())
    x = away_from_kinks(block, shape, 1e-3)
    # the whole Hessian-vector structure over input and parameters, along random directions
    assert mr.gradgradcheck(lambda a, *ps: block(a), [x, *params], eps=1e-7, atol=1e-6, rtol=1e-4, fast_mode=True)
    # JAX-style: jvp and vjp of the block and of its derivatives, w.r.t. the input
    check_grads(lambda a: block(a), [x.detach()], order=2, eps=1e-7, atol=1e-6, rtol=1e-4)


def test_small_resnet_second_order() -> None:
    model = models.resnet20().double().train()
    params = list(model.parameters())
    x = away_from_kinks(model, (2, 3, 8, 8), 2e-6)
    loss_target = mr.tensor(np.array([1, 7]))

    def loss(a: mr.Tensor, *ps: mr.Tensor) -> mr.Tensor:
        return mr.nn.functional.cross_entropy(model(a), loss_target, label_smoothing=0.1)

    assert mr.gradgradcheck(loss, [x, *params], eps=1e-8, atol=1e-6, rtol=1e-4, fast_mode=True)
    check_grads(lambda a: loss(a), [x.detach()], order=2, modes=("rev",), eps=1e-8, atol=1e-6, rtol=1e-4)


def test_a_wrong_second_derivative_in_a_block_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # plant a bug: batch_norm's differentiable backward forgets the dependence through the batch mean
    from minires.ops import normalization

    original = normalization.batch_norm_grads_graph

    def buggy(x, weight, g, needs, eps, stats=None):  # type: ignore[no-untyped-def]
        if stats is None:
            n, c = x.shape[:2]
            mean = x.detach().reshape(n, c, -1).numpy().mean(axis=(0, 2))
            var = x.detach().reshape(n, c, -1).numpy().var(axis=(0, 2))
            dx, dw, db = original(x, weight, g, needs, eps, None)
            frozen = original(x.detach(), weight, g, needs, eps, (mean, 1 / np.sqrt(var + eps)))
            return dx.detach() + (frozen[0] - frozen[0].detach()) if dx is not None else None, dw, db
        return original(x, weight, g, needs, eps, stats)

    monkeypatch.setattr(normalization, "batch_norm_grads_graph", buggy)
    block, shape = make_block("basic", False)
    block.train(True)
    x = away_from_kinks(block, shape, 1e-3)
    with pytest.raises(mr.GradcheckError):
        mr.gradgradcheck(lambda a: block(a), [x], eps=1e-7, atol=1e-6, rtol=1e-4, fast_mode=True)


@settings(max_examples=5)
@given(kind=st.sampled_from(["basic", "bottleneck", "preact_basic", "option_a"]), train=st.booleans(), data=st.data())
def test_block_second_order_on_drawn_inputs(kind: str, train: bool, data: st.DataObject) -> None:
    block, shape = make_block(kind, kind == "option_a")
    block.train(train)
    x = mr.tensor(data.draw(float_arrays(shape)), requires_grad=True)
    assume(kink_margin(block, x) > 1e-3)  # off ReLU kinks, as the first-order tests
    assert mr.gradgradcheck(lambda a: block(a), [x], eps=1e-7, atol=1e-6, rtol=1e-4, fast_mode=True)
    check_grads(lambda a: block(a), [x.detach()], order=2, modes=("rev",), eps=1e-7, atol=1e-6, rtol=1e-4)
