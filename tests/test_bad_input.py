"""Bad input gives an exception that names the op, what it got and what it expected."""

from __future__ import annotations

import numpy as np
import pytest
from foreign_device import foreign_device

import minires as mr


@pytest.fixture
def foreign():
    with foreign_device() as name:
        yield name


def test_matmul_wrong_shapes(device):
    a, b = mr.zeros(2, 3, device=device), mr.zeros(4, 5, device=device)
    with pytest.raises(ValueError, match=r"matmul: inner dims differ: \(2, 3\) @ \(4, 5\) \(3 != 4\)"):
        a @ b
    with pytest.raises(ValueError, match=r"matmul: .*\(3,\) @ \(2,\)"):
        mr.zeros(3, device=device) @ mr.zeros(2, device=device)
    with pytest.raises(ValueError, match="matmul: both operands need at least 1 dim"):
        mr.matmul(mr.tensor(1.0, device=device), mr.zeros(2, device=device))


def test_cat_and_stack_wrong_shapes(device):
    with pytest.raises(ValueError, match=r"cat: shapes \[\(2, 3\), \(2, 4\)\] differ outside dim 0"):
        mr.cat([mr.zeros(2, 3, device=device), mr.zeros(2, 4, device=device)], dim=0)
    with pytest.raises(ValueError, match=r"cat: zero-dimensional tensors .* use stack"):
        mr.cat([mr.tensor(1.0, device=device), mr.tensor(2.0, device=device)])
    with pytest.raises(ValueError, match="cat: shapes"):
        mr.cat([mr.zeros(2, device=device), mr.zeros(2, 1, device=device)])
    with pytest.raises(ValueError, match="cat: expected a non-empty sequence"):
        mr.cat([])
    with pytest.raises(ValueError, match=r"stack: expected tensors of one shape, got \[\(2,\), \(3,\)\]"):
        mr.stack([mr.zeros(2, device=device), mr.zeros(3, device=device)])
    with pytest.raises(IndexError, match="stack: dim 3 is out of range"):
        mr.stack([mr.zeros(2, device=device)], dim=3)


def test_reshape_and_friends_wrong_shapes(device):
    x = mr.zeros(2, 3, device=device)
    with pytest.raises(ValueError, match=r"reshape: cannot reshape a tensor of shape \(2, 3\) \(6 elements\) into \(4, 2\)"):
        x.reshape(4, 2)
    with pytest.raises(ValueError, match=r"expand: cannot expand shape \(2, 3\) to \(2, 4\)"):
        x.expand(2, 4)
    with pytest.raises(ValueError, match="permute: dims"):
        x.permute(0, 0)
    with pytest.raises(ValueError, match=r"permute: dims \(2, 1\)"):
        x.permute(2, 1)  # out of range, even though 2 % 2 == 0 would make it look like a permutation
    with pytest.raises(ValueError, match="flatten: start_dim 1 comes after end_dim 0"):
        x.flatten(1, 0)
    with pytest.raises(IndexError, match="unsqueeze: dim 5 is out of range"):
        x.unsqueeze(5)
    with pytest.raises(ValueError, match="pad: expected an even number"):
        mr.pad(x, (1, 2, 3))
    with pytest.raises(ValueError, match="pad: negative padding"):
        mr.pad(x, (-1, 0))
    with pytest.raises(IndexError, match=r"getitem: index 5 is invalid for shape \(2, 3\)"):
        x[5]


def test_elementwise_shapes_that_do_not_broadcast(device):
    a, b = mr.zeros(2, 3, device=device), mr.zeros(4, device=device)
    for op, name in [(lambda: a + b, "add"), (lambda: a - b, "sub"), (lambda: a * b, "mul"), (lambda: a / b, "div"),
                     (lambda: a**b, "pow"), (lambda: mr.maximum(a, b), "maximum"), (lambda: mr.minimum(a, b), "minimum")]:
        with pytest.raises(ValueError, match=rf"{name}: shapes \(2, 3\) and \(4,\) do not broadcast"):
            op()


def test_operand_of_unknown_type(device):
    with pytest.raises(TypeError, match="expected a Tensor, a number or an array, got list"):
        mr.zeros(2, device=device) + [1, 2]


def test_mixing_devices_names_both(foreign):
    cpu = mr.tensor([1.0, 2.0])
    far = mr.tensor([1.0, 2.0]).to(foreign)
    assert far.device == "foreign"
    cases = [
        lambda: cpu + far,
        lambda: far * cpu,
        lambda: mr.matmul(cpu, far),
        lambda: mr.cat([cpu, far]),
        lambda: mr.stack([far, cpu]),
        lambda: mr.where(mr.tensor([True, False]), far, cpu),
        lambda: far + np.array([1.0, 2.0]),
        lambda: cpu < far,
    ]
    for make in cases:
        with pytest.raises(RuntimeError, match=r"cpu and foreign"):
            make()


def test_backward_gradient_on_another_device(foreign):
    x = mr.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="backward: gradient is on foreign, the output on cpu"):
        (x * 2).backward(mr.ones(2).to(foreign))


def test_unknown_device():
    with pytest.raises(ValueError, match="device: unknown device 'tpu'"):
        mr.zeros(2, device="tpu")


def test_requires_grad_on_integer_tensor():
    with pytest.raises(RuntimeError, match="requires_grad: only floating-point tensors .* got dtype int64"):
        mr.tensor([1, 2], requires_grad=True)
    with pytest.raises(RuntimeError, match="got dtype int32"):
        mr.zeros(2, dtype=mr.int32).requires_grad_()
    with pytest.raises(RuntimeError, match="got dtype bool"):
        mr.tensor([True]).requires_grad_()


def test_item_and_bool_of_many_elements(device):
    x = mr.zeros(2, 2, device=device)
    with pytest.raises(ValueError, match=r"item: only a one-element tensor .* got shape \(2, 2\)"):
        x.item()
    with pytest.raises(RuntimeError, match="bool: the truth value of a tensor with 4 elements is ambiguous"):
        bool(x)
    assert mr.zeros(1, 1, device=device).item() == 0.0


def test_setitem_on_a_tensor_that_requires_grad(device):
    x = mr.zeros(3, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place operation"):
        x[0] = 1.0
    with mr.no_grad():
        x[0] = 1.0
    assert x.numpy()[0] == 1.0


def test_wrong_dtypes(device):
    with pytest.raises(TypeError, match="relu: expected a floating-point tensor, got dtype int64"):
        mr.relu(mr.tensor([1, -1], device=device))
    with pytest.raises(TypeError, match="mean: expected a floating-point tensor"):
        mr.tensor([1, 2], device=device).mean()
    with pytest.raises(TypeError, match="only integer tensors can be used as an index"):
        [1, 2][mr.tensor(1.0, device=device)]


def test_non_scalar_backward_and_second_backward(device):
    x = mr.tensor([1.0, 2.0], device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="backward: grad can be created implicitly only for scalar outputs"):
        (x * 2).backward()
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="backward: trying to backward through Sum a second time"):
        y.backward()
