"""state_dict / load_state_dict: PyTorch's key order, save/load round trip, errors, strict=False, torch weights."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import minires as mr
import minires.nn as nn


class Net(nn.Module):
    """A small convnet whose state_dict keys are written out by hand below."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 4 * 4, classes)
        self.register_buffer("scratch", mr.zeros(2), persistent=False)

    def forward(self, x: mr.Tensor) -> mr.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.layer1(x))
        return self.fc(self.flatten(x))


EXPECTED_KEYS = [
    "conv1.weight",
    "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
    "layer1.0.weight", "layer1.0.bias",
    "layer1.1.weight", "layer1.1.bias", "layer1.1.running_mean", "layer1.1.running_var",
    "layer1.1.num_batches_tracked",
    "fc.weight", "fc.bias",
]  # fmt: skip


def _snapshot(m: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in m.state_dict().items()}


def test_keys_in_pytorch_order_and_non_persistent_excluded() -> None:
    m = Net()
    sd = m.state_dict()
    assert isinstance(sd, OrderedDict)
    assert list(sd) == EXPECTED_KEYS
    assert "scratch" in dict(m.named_buffers())  # a buffer, just not saved
    assert sd["bn1.num_batches_tracked"].dtype == np.int64 and sd["bn1.num_batches_tracked"].shape == ()


def test_values_are_detached_and_share_memory() -> None:
    m = Net()
    sd = m.state_dict()
    w = sd["conv1.weight"]
    assert type(w) is mr.Tensor and not w.requires_grad
    assert w.data is m.conv1.weight.data  # a view of the live weight, as PyTorch's
    assert m.state_dict(keep_vars=True)["conv1.weight"] is m.conv1.weight


def test_roundtrip_through_save_and_load(tmp_path: Path) -> None:
    mr.manual_seed(1)
    src = Net().train()
    x = mr.randn(2, 3, 4, 4)
    src(x)  # moves running stats and num_batches_tracked away from their defaults
    src.eval()
    path = tmp_path / "net.npz"
    mr.save(src.state_dict(), path)
    mr.manual_seed(2)
    dst = Net()
    assert not np.array_equal(dst.conv1.weight.numpy(), src.conv1.weight.numpy())
    weight_before = dst.conv1.weight
    result = dst.load_state_dict(mr.load(path))
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert dst.conv1.weight is weight_before  # copied in place
    for key, value in _snapshot(src).items():
        np.testing.assert_array_equal(dst.state_dict()[key].numpy(), value, err_msg=key)
    assert dst.bn1.num_batches_tracked.item() == 1 and dst.bn1.num_batches_tracked.dtype == np.int64
    np.testing.assert_array_equal(dst.eval()(x).numpy(), src(x).numpy())


def test_load_accepts_numpy_tensors_and_casts_to_parameter_dtype(device: str) -> None:
    m = nn.Linear(3, 2).to(device)
    w = np.arange(6, dtype=np.float64).reshape(2, 3)
    m.load_state_dict({"weight": w, "bias": mr.tensor([1.0, 2.0])})
    assert m.weight.dtype == np.float32 and m.weight.device == device
    np.testing.assert_array_equal(m.weight.numpy(), w.astype(np.float32))
    np.testing.assert_array_equal(m.bias.numpy(), [1.0, 2.0])
    bn = nn.BatchNorm1d(2)
    sd = {k: v.numpy() for k, v in bn.state_dict().items()}
    sd["num_batches_tracked"] = np.array(5)
    bn.load_state_dict(sd)
    assert bn.num_batches_tracked.item() == 5 and bn.num_batches_tracked.dtype == np.int64


def test_all_errors_in_one_message_and_nothing_loaded() -> None:
    m = Net()
    before = _snapshot(m)
    bad = {k: v.numpy() for k, v in Net(classes=3).state_dict().items()}  # fc is (3, 64)
    del bad["conv1.weight"], bad["layer1.0.bias"]
    bad["head.weight"] = np.zeros(2)
    with pytest.raises(RuntimeError) as info:
        m.load_state_dict(bad)
    msg = str(info.value)
    assert msg.startswith("Error(s) in loading state_dict for Net:\n\t")
    assert 'Missing key(s) in state_dict: "conv1.weight", "layer1.0.bias".' in msg
    assert 'Unexpected key(s) in state_dict: "head.weight".' in msg
    assert (
        "size mismatch for fc.weight: copying a param with shape (3, 64) from checkpoint, "
        "the shape in current model is (10, 64)."
    ) in msg
    assert "size mismatch for fc.bias" in msg
    assert msg.index("Missing") < msg.index("Unexpected") < msg.index("size mismatch")
    for key, value in before.items():  # all or nothing: the good entries were not copied either
        np.testing.assert_array_equal(m.state_dict()[key].numpy(), value, err_msg=key)


def test_strict_false_returns_missing_and_unexpected() -> None:
    m = Net()
    sd = {k: v.numpy() + 1 for k, v in m.state_dict().items() if not k.startswith("fc.")}
    sd["extra.thing"] = np.ones(1)
    result = m.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["fc.weight", "fc.bias"]
    assert result.unexpected_keys == ["extra.thing"]
    missing, unexpected = result  # a named tuple, as PyTorch's
    assert missing == ["fc.weight", "fc.bias"] and unexpected == ["extra.thing"]
    np.testing.assert_array_equal(m.bn1.running_var.numpy(), np.full(4, 2.0))  # the rest was loaded
    sd["fc.weight"] = np.zeros((1, 1))
    with pytest.raises(RuntimeError, match="size mismatch for fc.weight"):
        m.load_state_dict(sd, strict=False)  # size mismatches raise even when not strict
    assert repr(nn.Linear(1, 1).load_state_dict({"weight": np.ones((1, 1)), "bias": np.ones(1)})) == (
        "<All keys matched successfully>"
    )


def test_missing_num_batches_tracked_is_tolerated_like_pytorch() -> None:
    bn = nn.BatchNorm2d(3)
    bn.num_batches_tracked.data[...] = 4
    old_checkpoint = {"weight": np.full(3, 2.0), "bias": np.zeros(3), "running_mean": np.ones(3), "running_var": np.ones(3)}
    assert bn.load_state_dict(old_checkpoint).missing_keys == []
    assert bn.num_batches_tracked.item() == 4
    np.testing.assert_array_equal(bn.weight.numpy(), np.full(3, 2.0))
    with pytest.raises(RuntimeError, match='Missing key.*"running_var"'):
        bn.load_state_dict({k: v for k, v in old_checkpoint.items() if k != "running_var"})


def test_load_rejects_non_mapping() -> None:
    with pytest.raises(TypeError, match="dict-like"):
        nn.Linear(1, 1).load_state_dict([("weight", np.ones((1, 1)))])  # type: ignore[arg-type]


def test_torch_state_dict_loads_and_matches_outputs() -> None:
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    torch.manual_seed(0)
    tmodel = tnn.Sequential(
        tnn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
        tnn.BatchNorm2d(8),
        tnn.ReLU(inplace=True),
        tnn.Conv2d(8, 8, 3, padding=1, groups=2),
        tnn.BatchNorm2d(8),
        tnn.ReLU(),
        tnn.Flatten(),
        tnn.Linear(8 * 4 * 4, 5),
    )
    tmodel.train()
    with torch.no_grad():
        tmodel(torch.randn(6, 3, 8, 8))  # non-trivial running statistics
    tmodel.eval()
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),
    ).eval()
    exported = {k: v.numpy() for k, v in tmodel.state_dict().items()}
    assert list(exported) == list(model.state_dict())
    model.load_state_dict(exported)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    expected = tmodel(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(model(mr.tensor(x)).numpy(), expected, rtol=1e-4, atol=1e-5)
    model.load_state_dict(tmodel.state_dict())  # torch tensors themselves are accepted too
    np.testing.assert_allclose(model(mr.tensor(x)).numpy(), expected, rtol=1e-4, atol=1e-5)
