"""nn.Module: registration, traversal order, modes, device/dtype moves, hooks, containers, repr."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
import pytest
from foreign_device import ForeignArray, foreign_device

import minires as mr
import minires.nn as nn


class Block(nn.Module):
    """A hand-built module: own parameter, own buffer, two children (one nested)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(mr.ones(2))
        self.register_buffer("count", mr.zeros(1))
        self.fc = nn.Linear(3, 2)
        self.inner = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU())
        self.plain = mr.zeros(5)  # a plain Tensor attribute is not registered

    def forward(self, x: mr.Tensor) -> mr.Tensor:
        return self.inner(self.fc(x)) * self.scale


def test_registration_order_of_parameters_buffers_children() -> None:
    m = Block()
    assert [n for n, _ in m.named_parameters()] == ["scale", "fc.weight", "fc.bias", "inner.0.weight"]
    assert [n for n, _ in m.named_buffers()] == ["count"]
    assert [n for n, _ in m.named_children()] == ["fc", "inner"]
    assert [n for n, _ in m.named_modules()] == ["", "fc", "inner", "inner.0", "inner.1"]
    assert [n for n, _ in m.named_parameters(recurse=False)] == ["scale"]
    assert [type(c).__name__ for c in m.children()] == ["Linear", "Sequential"]
    assert len(list(m.modules())) == 5
    assert all(isinstance(p, nn.Parameter) for p in m.parameters())
    assert m.fc.weight is dict(m.named_parameters())["fc.weight"]


def test_plain_tensor_attribute_is_not_registered_and_reassignment_moves_registry() -> None:
    m = Block()
    assert "plain" not in dict(m.named_buffers()) and "plain" not in dict(m.named_parameters())
    m.fc = nn.Identity()  # a child replaced by a parameter-free module
    assert [n for n, _ in m.named_parameters()] == ["scale", "inner.0.weight"]
    m.scale = None  # a registered parameter may be set to None
    assert [n for n, _ in m.named_parameters()] == ["inner.0.weight"]
    with pytest.raises(TypeError, match="parameter 'scale'"):
        m.scale = mr.ones(2)  # a plain tensor can't replace a parameter
    with pytest.raises(TypeError, match="buffer 'count'"):
        m.count = np.zeros(1)
    del m.inner
    assert [n for n, _ in m.named_parameters()] == []
    with pytest.raises(AttributeError, match="no attribute 'inner'"):
        _ = m.inner


def test_register_errors_name_the_problem() -> None:
    m = nn.Module()
    with pytest.raises(KeyError, match="contain"):
        m.register_buffer("a.b", mr.zeros(1))
    with pytest.raises(TypeError, match="nn.Parameter or None"):
        m.register_parameter("w", mr.zeros(1))
    m.x = 3
    with pytest.raises(KeyError, match="already exists"):
        m.register_buffer("x", mr.zeros(1))
    forged = nn.Parameter(mr.ones(2))
    forged.grad_fn = (mr.ones(2, requires_grad=True) * 2).grad_fn  # as if it came out of an op
    with pytest.raises(ValueError, match="non-leaf"):
        m.register_parameter("w", forged)

    class Early(nn.Module):
        def __init__(self) -> None:
            self.w = nn.Parameter(mr.ones(1))

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Early()


def test_parameter_is_a_leaf_that_requires_grad() -> None:
    p = nn.Parameter(mr.ones(2, 3))
    assert p.requires_grad and p.is_leaf and isinstance(p, mr.Tensor)
    assert not nn.Parameter(mr.ones(1), requires_grad=False).requires_grad
    assert repr(p).startswith("Parameter containing:\ntensor(")
    y = (p * 2).sum()
    assert type(p * 2) is mr.Tensor  # ops make plain tensors, not parameters
    y.backward()
    np.testing.assert_array_equal(p.grad.numpy(), np.full((2, 3), 2.0))


def test_shared_parameter_is_listed_once() -> None:
    a = nn.Linear(2, 2)
    m = nn.Sequential(a, nn.ReLU(), a)
    assert [n for n, _ in m.named_parameters()] == ["0.weight", "0.bias"]
    assert len(list(m.modules())) == 3  # Sequential, Linear (once), ReLU
    assert list(m.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]  # as PyTorch


def test_train_eval_propagate_and_return_self() -> None:
    m = Block()
    assert m.training and m.inner[1].training
    assert m.eval() is m
    assert not any(mod.training for mod in m.modules())
    assert m.train() is m
    assert all(mod.training for mod in m.modules())
    m.inner.train(False)
    assert m.training and not m.inner.training and not m.inner[0].training
    with pytest.raises(ValueError, match="boolean"):
        m.train(1)  # type: ignore[arg-type]


def test_zero_grad_and_requires_grad_() -> None:
    m = Block()
    m(mr.randn(4, 3)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    grads = [p.grad for p in m.parameters()]
    m.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.numpy().any() for p in m.parameters())
    # zeroed in place, as PyTorch (and Optimizer.zero_grad): a reference to the gradient sees the zeros
    assert all(p.grad is g for p, g in zip(m.parameters(), grads))
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    assert m.requires_grad_(False) is m
    assert not any(p.requires_grad for p in m.parameters())


def test_to_dtype_keeps_parameter_identity_and_integer_buffers(device: str) -> None:
    m = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))
    params_before = list(m.parameters())
    buffers_before = list(m.buffers())
    m(mr.randn(2, 2, 5, 5)).sum().backward()
    assert m.to(device, mr.float64) is m
    assert [id(p) for p in m.parameters()] == [id(p) for p in params_before]
    assert [id(b) for b in m.buffers()] == [id(b) for b in buffers_before]
    assert all(p.dtype == np.float64 and p.device == device for p in m.parameters())
    assert all(p.grad.dtype == np.float64 and p.grad.device == device for p in m.parameters())
    assert m[1].running_mean.dtype == np.float64
    assert m[1].num_batches_tracked.dtype == np.int64 and m[1].num_batches_tracked.device == device
    assert all(p.requires_grad and p.is_leaf for p in m.parameters())
    m.float()
    assert all(p.dtype == np.float32 for p in m.parameters())
    assert m[1].num_batches_tracked.dtype == np.int64
    m.to(mr.float64)  # a dtype alone, positionally
    assert m[0].weight.dtype == np.float64
    m.cpu().double()
    assert m[0].weight.device == "cpu"
    with pytest.raises(TypeError, match="floating point"):
        m.to(dtype=mr.int64)


def test_to_then_optimizer_style_update_reaches_the_model(device: str) -> None:
    m = nn.Linear(3, 2)
    held = list(m.parameters())  # what an optimizer built before .to() holds
    m.to(device).double()
    x = mr.randn(4, 3, dtype=mr.float64).to(device)
    m(x).sum().backward()
    with mr.no_grad():
        for p in held:
            p.data -= 0.1 * p.grad.data
    assert all(p.grad is not None for p in held)
    np.testing.assert_allclose(held[1].numpy(), m.bias.numpy())


def test_apply_visits_children_first() -> None:
    m = Block()
    seen: list[str] = []
    assert m.apply(lambda mod: seen.append(type(mod).__name__)) is m
    assert seen == ["Linear", "Linear", "ReLU", "Sequential", "Block"]


def test_forward_hooks_fire_replace_and_remove() -> None:
    lin = nn.Linear(3, 2)
    calls: list[tuple[str, object]] = []

    def pre(module: nn.Module, args: tuple) -> tuple:
        calls.append(("pre", module))
        return (args[0] * 0,)  # replaces the input

    def post(module: nn.Module, args: tuple, out: mr.Tensor) -> mr.Tensor:
        calls.append(("post", args[0].numpy().sum()))
        return out + 1

    h1 = lin.register_forward_pre_hook(pre)
    h2 = lin.register_forward_hook(post)
    assert isinstance(h1, nn.RemovableHandle)
    out = lin(mr.ones(1, 3))
    np.testing.assert_allclose(out.numpy(), lin.bias.numpy()[None] + 1, rtol=1e-6)
    assert calls == [("pre", lin), ("post", 0.0)]
    h1.remove()
    h2.remove()
    h2.remove()  # twice is fine
    out = lin(mr.ones(1, 3))
    np.testing.assert_allclose(out.numpy(), mr.ones(1, 3).numpy() @ lin.weight.numpy().T + lin.bias.numpy(), rtol=1e-6)
    assert len(calls) == 2


def test_forward_hook_can_attach_tensor_hook_and_prepend_order() -> None:
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    grads: dict[str, np.ndarray] = {}
    order: list[str] = []

    def watch(module: nn.Module, args: tuple, out: mr.Tensor) -> None:
        out.register_hook(lambda g: grads.__setitem__("relu", g.numpy()))

    m[1].register_forward_hook(watch)
    m[1].register_forward_hook(lambda mod, args, out: order.append("second"))
    m[1].register_forward_hook(lambda mod, args, out: order.append("first"), prepend=True)
    handle = m[0].register_forward_hook(lambda mod, args, out: order.append("once"))
    m(mr.randn(5, 3)).sum().backward()
    handle.remove()
    m(mr.randn(5, 3))
    assert order == ["once", "first", "second", "first", "second"]
    np.testing.assert_allclose(grads["relu"], np.broadcast_to(m[2].weight.numpy(), (5, 4)), rtol=1e-6)


def test_sequential_indexing_slicing_append() -> None:
    a, b, c = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)
    s = nn.Sequential(a, b, c)
    assert len(s) == 3 and s[0] is a and s[-1] is c and list(s) == [a, b, c]
    head = s[1:]
    assert isinstance(head, nn.Sequential) and list(head) == [b, c]
    assert [n for n, _ in head.named_children()] == ["1", "2"]  # keys kept, as PyTorch
    x = mr.randn(4, 2)
    np.testing.assert_allclose(s(x).numpy(), c(b(a(x))).numpy())
    s.append(nn.Sigmoid())
    assert len(s) == 4 and [n for n, _ in s.named_children()] == ["0", "1", "2", "3"]
    with pytest.raises(IndexError, match="out of range"):
        _ = s[4]
    named = nn.Sequential(OrderedDict([("conv", nn.Conv2d(1, 1, 1)), ("act", nn.ReLU())]))
    assert list(named.state_dict()) == ["conv.weight", "conv.bias"]
    assert named.act is named[1]
    del s[0]
    assert len(s) == 3 and s[0] is b


def test_sequential_delete_renumbers_so_append_keeps_every_module() -> None:
    # Deleting used to leave keys "1", "2"; append then registered under str(len) == "2" and silently
    # replaced the last module. PyTorch renumbers the rest "0", "1", ... after a delete.
    a, b, c, d = nn.ReLU(), nn.Tanh(), nn.Sigmoid(), nn.Identity()
    s = nn.Sequential(a, b, c)
    del s[0]
    assert [n for n, _ in s.named_children()] == ["0", "1"]
    s.append(d)
    assert list(s) == [b, c, d]
    named = nn.Sequential(OrderedDict([("conv", nn.Conv2d(1, 1, 1)), ("act", nn.ReLU()), ("out", nn.Tanh())]))
    del named[1:]
    assert [n for n, _ in named.named_children()] == ["0"]


def test_module_list_and_dict() -> None:
    layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    assert len(layers) == 3 and [n for n, _ in layers.named_parameters()][-1] == "2.bias"
    layers.append(nn.ReLU())
    assert isinstance(layers[-1], nn.ReLU) and isinstance(layers[1:], nn.ModuleList)
    del layers[0]
    assert [n for n, _ in layers.named_children()] == ["0", "1", "2"]
    d = nn.ModuleDict({"enc": nn.Linear(2, 3), "act": nn.Tanh()})
    assert "enc" in d and list(d.keys()) == ["enc", "act"] and len(d) == 2
    assert list(d.state_dict()) == ["enc.weight", "enc.bias"]


def test_repr_is_nested_like_pytorch() -> None:
    m = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.Sequential(nn.Flatten(), nn.Linear(64, 10)),
    )
    assert repr(m) == (
        "Sequential(\n"
        "  (0): Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)\n"
        "  (1): BatchNorm2d(64, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)\n"
        "  (2): ReLU(inplace=True)\n"
        "  (3): Sequential(\n"
        "    (0): Flatten(start_dim=1, end_dim=-1)\n"
        "    (1): Linear(in_features=64, out_features=10, bias=True)\n"
        "  )\n"
        ")"
    )
    assert repr(nn.Module()) == "Module()"


def test_forward_missing_and_get_submodule() -> None:
    with pytest.raises(NotImplementedError, match="forward"):
        nn.Module()(mr.ones(1))
    m = Block()
    assert m.get_submodule("inner.0") is m.inner[0]
    assert m.get_submodule("") is m
    with pytest.raises(AttributeError, match="nope"):
        m.get_submodule("inner.nope")


def test_deepcopy_makes_independent_module() -> None:
    m = Block()
    twin = copy.deepcopy(m)
    assert isinstance(twin.fc.weight, nn.Parameter) and twin.fc.weight is not m.fc.weight
    twin.fc.weight.data[...] = 0
    assert m.fc.weight.numpy().any()
    assert list(twin.state_dict()) == list(m.state_dict())


def test_nn_utils_is_reachable() -> None:
    p = nn.Parameter(mr.zeros(4, dtype=mr.float64))
    p.grad = mr.tensor(np.array([3.0, 0.0, 4.0, 0.0]))
    total = nn.utils.clip_grad_norm_([p], max_norm=1.0)
    assert float(total) == pytest.approx(5.0)
    np.testing.assert_allclose(p.grad.numpy(), [0.6, 0.0, 0.8, 0.0], rtol=1e-5)
    nn.utils.clip_grad_value_([p], 0.7)
    np.testing.assert_allclose(p.grad.numpy(), [0.6, 0.0, 0.7, 0.0], rtol=1e-5)


@pytest.fixture
def foreign() -> Iterator[str]:
    with foreign_device() as name:
        yield name


def test_model_moves_to_another_device_and_back(foreign: str) -> None:
    """to(device) moves every parameter, gradient and buffer; init and load_state_dict land on that device."""
    m = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 2))
    m(mr.randn(2, 2, 4, 4)).sum().backward()
    m.to(foreign)
    tensors = list(m.parameters()) + list(m.buffers()) + [p.grad for p in m.parameters()]
    assert all(isinstance(t.data, ForeignArray) for t in tensors)
    nn.init.kaiming_normal_(m[0].weight)
    m.load_state_dict({k: v.numpy() for k, v in m.state_dict().items()})
    assert all(isinstance(t.data, ForeignArray) for t in list(m.parameters()) + list(m.buffers()))
    out = m(mr.randn(2, 2, 4, 4).to(foreign))  # the whole model runs on the device, backward included
    assert out.device == "foreign"
    out.sum().backward()
    assert all(isinstance(p.grad.data, ForeignArray) for p in m.parameters())
    m.cpu()
    assert all(type(t.data) is np.ndarray for t in list(m.parameters()) + list(m.buffers()))
