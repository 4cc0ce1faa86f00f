"""save / load: .npz round trips of nested dicts, atomic writes, no pickle, clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

import minires as mr
from minires.serialization import _SAVEZ_PARAMETERS


def test_round_trip_of_nested_dicts(tmp_path, device):
    state = {
        "model": {"fc.weight": mr.tensor(np.arange(6.0).reshape(2, 3), device=device), "fc.bias": np.zeros(2, np.float32)},
        "optim": {"step": 7, "lr": 0.1, "moments": {"m": np.ones((2, 2), np.float16)}},
        "flag": True,
    }
    path = tmp_path / "ckpt.npz"
    mr.save(state, path)
    loaded = mr.load(path)
    assert set(loaded) == {"model.fc.weight", "model.fc.bias", "optim.step", "optim.lr", "optim.moments.m", "flag"}
    np.testing.assert_array_equal(loaded["model.fc.weight"], np.arange(6.0).reshape(2, 3))
    assert loaded["model.fc.weight"].dtype == np.float64
    assert loaded["model.fc.bias"].dtype == np.float32
    assert loaded["optim.moments.m"].dtype == np.float16
    assert loaded["optim.step"].item() == 7 and loaded["optim.lr"].item() == 0.1
    assert loaded["flag"].item() is True
    assert all(type(v) is np.ndarray for v in loaded.values())
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temporary file left behind


def test_save_overwrites_and_path_can_be_a_string(tmp_path):
    path = str(tmp_path / "w.npz")
    mr.save({"a": np.ones(2)}, path)
    mr.save({"b": np.zeros(3)}, path)
    assert set(mr.load(path)) == {"b"}


def test_failure_mid_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    mr.save({"w": np.arange(3.0)}, path)

    def exploding_savez(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", exploding_savez)
    with pytest.raises(OSError, match="disk full"):
        mr.save({"w": np.zeros(3)}, path)
    monkeypatch.undo()
    np.testing.assert_array_equal(mr.load(path)["w"], np.arange(3.0))
    assert os.listdir(tmp_path) == ["ckpt.npz"]


def test_refuses_pickled_object_arrays(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, payload=np.array([{"x": 1}, None], dtype=object))
    with pytest.raises(ValueError, match="pickled objects"):
        mr.load(path)


def test_save_refuses_objects(tmp_path):
    with pytest.raises(TypeError, match="save: value for 'x' is a object, not an array or number"):
        mr.save({"x": object()}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="save: keys must be strings"):
        mr.save({1: np.ones(1)}, tmp_path / "x.npz")
    with pytest.raises(ValueError, match="save: key 'a.b' appears twice"):
        mr.save({"a": {"b": 1}, "a.b": 2}, tmp_path / "x.npz")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="load: no file at"):
        mr.load(tmp_path / "nope.npz")


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04truncated"])
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="load: .* is not a readable .npz file"):
        mr.load(path)


def test_truncated_real_file(tmp_path):
    path = tmp_path / "cut.npz"
    mr.save({"w": np.arange(1000.0)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="load: .* is not a readable .npz file"):
        mr.load(path)


def test_a_plain_npy_file_is_not_a_state_dict(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.ones(3))
    with pytest.raises(ValueError, match="load: .* is not a readable .npz file"):
        mr.load(path)


@pytest.mark.parametrize("key", sorted(_SAVEZ_PARAMETERS))  # numpy 2.x: "file" and "allow_pickle"
def test_keys_that_are_savez_parameter_names_are_refused_clearly(tmp_path, key):
    # np.savez takes the keys as keyword arguments: "file" collided with its first parameter (an
    # unclear TypeError) and "allow_pickle" was swallowed as an option (the array silently missing)
    path = tmp_path / "ckpt.npz"
    with pytest.raises(ValueError, match=f"save: key '{key}' is a parameter name of np.savez"):
        mr.save({key: np.arange(2.0), "w": np.ones(1)}, path)
    assert not path.exists()
    mr.save({"nested": {key: np.arange(2.0)}}, path)  # a dotted key is fine
    np.testing.assert_array_equal(mr.load(path)[f"nested.{key}"], [0.0, 1.0])


def test_save_tree_roundtrips_every_plain_type_exactly(tmp_path):
    rng_state = np.random.default_rng(7).bit_generator.state  # holds 128-bit integers
    tree = {
        "weights": {"conv.weight": np.arange(6.0).reshape(2, 3), "n": mr.tensor([1, 2])},
        "state": {0: {"step": 3, "buf": np.ones(2, dtype=np.float32)}, 1: {}},
        "groups": [{"lr": 0.1, "betas": (0.9, 0.999), "nesterov": True, "params": [0, 1], "name": "g", "x": None}],
        "rng": rng_state,
    }
    mr.save_tree(tree, tmp_path / "t.npz")
    back = mr.load_tree(tmp_path / "t.npz")
    assert back["groups"] == tree["groups"] and isinstance(back["groups"][0]["betas"], tuple)
    assert back["rng"] == rng_state
    assert set(back["state"]) == {0, 1} and back["state"][0]["step"] == 3 and back["state"][1] == {}
    assert back["state"][0]["buf"].dtype == np.float32
    np.testing.assert_array_equal(back["weights"]["conv.weight"], tree["weights"]["conv.weight"])
    np.testing.assert_array_equal(back["weights"]["n"], [1, 2])
    # every array is also a plain .npz entry under its dotted path
    flat = mr.load(tmp_path / "t.npz")
    np.testing.assert_array_equal(flat["weights.conv.weight"], tree["weights"]["conv.weight"])


def test_save_tree_keeps_arrays_whose_dotted_paths_collide(tmp_path):
    tree = {"a": {"b": np.zeros(2)}, "a.b": np.ones(3)}
    mr.save_tree(tree, tmp_path / "c.npz")
    back = mr.load_tree(tmp_path / "c.npz")
    np.testing.assert_array_equal(back["a"]["b"], np.zeros(2))
    np.testing.assert_array_equal(back["a.b"], np.ones(3))


def test_load_tree_reads_only_the_sections_asked_for(tmp_path):
    mr.save_tree({"config": {"epochs": 3}, "model": {"w": np.zeros(4)}}, tmp_path / "s.npz")
    assert mr.load_tree(tmp_path / "s.npz", sections=["config"]) == {"config": {"epochs": 3}}


def test_load_tree_errors(tmp_path):
    mr.save({"w": np.zeros(2)}, tmp_path / "plain.npz")
    with pytest.raises(ValueError, match="not written by save_tree"):
        mr.load_tree(tmp_path / "plain.npz")
    with pytest.raises(FileNotFoundError, match="no file"):
        mr.load_tree(tmp_path / "missing.npz")
    with pytest.raises(TypeError, match="dict keys must be str or int"):
        mr.save_tree({"k": {(1, 2): np.zeros(1)}}, tmp_path / "bad.npz")
    with pytest.raises(TypeError, match="cannot store a object"):
        mr.save_tree({"k": object()}, tmp_path / "bad.npz")
