"""README's Python examples run as written: the code blocks are read from README.md and executed (the
property-based tests they define are called too), so the README cannot drift from the code."""

from __future__ import annotations

import os

import numpy as np
import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_blocks(heading: str) -> list[str]:
    """The ```python blocks of the README section that starts with ``heading`` (up to the next heading).

    Each block comes after as many empty lines as precede it in README.md, so that line n of the compiled
    code is line n of the file: tracebacks, and hypothesis reading a test's source, then see the real lines."""
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    blocks, current, fence = [], None, False
    for number, line in enumerate(lines[start + 1 :], start + 1):
        if line.startswith("```"):
            fence = not fence
            if fence and line.strip() == "```python":
                current = [""] * (number + 1)  # the block's first line is line number + 2 of the file (1-based)
            elif not fence and current is not None:
                blocks.append("\n".join(current) + "\n")
                current = None
            continue
        if not fence and line.startswith("#"):
            break  # the next heading ends the section
        if current is not None:
            current.append(line)
    assert blocks, f"no python block under {heading!r}"
    return blocks


def run(code: str, tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    namespace: dict = {"__name__": "readme"}
    exec(compile(code, README, "exec"), namespace)  # noqa: S102 - our own README
    return namespace


def test_short_tour(tmp_path, monkeypatch):
    ns = run(python_blocks("## A short tour")[0], tmp_path, monkeypatch)
    h = ns["h"].numpy()
    np.testing.assert_allclose(ns["h"].grad.numpy(), 1 + 2 * (1 - np.tanh(2 * h) ** 2), rtol=1e-12)


def test_property_based_examples(tmp_path, monkeypatch):
    ns = run(python_blocks("### A property-based gradient test")[0], tmp_path, monkeypatch)
    ns["test_relu_gradient"]()
    ns["test_var_gradient"]()


def test_hand_written_training_loop(tmp_path, monkeypatch):
    ns = run(python_blocks("### A hand-written training loop")[0], tmp_path, monkeypatch)
    params = list(ns["model"].parameters())
    assert all(p.requires_grad and p.is_leaf for p in params)
    assert all(p._version >= 300 for p in params)  # every step updated the same Parameter objects in place
    assert ns["accuracy"] > 0.9 and ns["loss"].item() < 0.3


def test_weights_between_pytorch_and_minires(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    ns = run(python_blocks("### Moving weights between PyTorch and minires")[0], tmp_path, monkeypatch)
    for key, value in ns["theirs"].state_dict().items():
        np.testing.assert_array_equal(ns["ours"].state_dict()[key].numpy(), value.numpy())
    assert (tmp_path / "weights.npz").exists() and (tmp_path / "from_torch.npz").exists()
