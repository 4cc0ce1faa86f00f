"""minires.viz: graph DOT structure, gradient-flow recorder values, skip-probe decomposition."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import minires as mr
import minires.nn as nn
import minires.nn.functional as F
from minires.models import BasicBlock, CifarResNet, PreActBasicBlock
from minires.ops.cuda import fast_kernels_off
from minires.viz import (
    GradientFlowRecorder,
    GraphvizNotFoundWarning,
    SkipProbe,
    format_skip_table,
    param_names,
    plot_gradient_flow,
    render,
    to_dot,
)
from minires.viz import graph as graph_module


def _nodes_and_edges(dot: str) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    nodes = {m.group(1): m.group(2) for m in re.finditer(r'^\s+(\w+) \[label="((?:[^"\\]|\\.)*)"', dot, re.M)}
    edges = [(m.group(1), m.group(2), m.group(3) or "") for m in re.finditer(r"^\s+(\w+) -> (\w+)(?: \[(.*)\])?;", dot, re.M)]
    return nodes, edges


def _small_graph() -> tuple[mr.Tensor, dict[str, mr.Tensor]]:
    """y = sum(h + relu(h * w)) with h = x * a: a skip from h to the add."""
    x = mr.tensor(np.ones((2, 3)), requires_grad=True)
    a = mr.tensor(np.full((2, 3), 2.0), requires_grad=True)
    w = mr.tensor(np.full((2, 3), 0.5), requires_grad=True)
    h = x * a
    y = (h + mr.relu(h * w)).sum()
    return y, {"x": x, "a": a, "w": w}


def test_to_dot_small_graph_counts_and_names() -> None:
    y, leaves = _small_graph()
    dot = to_dot(y, leaves)
    nodes, edges = _nodes_and_edges(dot)
    ops = [label for label in nodes.values() if label.endswith("Backward") or "Backward\\n" in label]
    # ops: Mul (x*a), Mul (h*w), ReLU, Add, Sum
    expected = ["MulBackward", "MulBackward", "ReLUBackward", "AddBackward", "SumBackward"]
    assert sorted(op.split("\\n")[0] for op in ops) == sorted(expected)
    # tensors: 3 named leaves + h, h*w, relu, add output, and the output
    assert len(nodes) == 5 + 3 + 4 + 1
    for name in ("x", "a", "w"):
        assert any(label.startswith(name + "\\n(2, 3)") for label in nodes.values())
    # edges: each op has one edge per input and one per output: Mul 2+1, Mul 2+1, ReLU 1+1, Add 2+1, Sum 1+1
    assert len(edges) == 3 + 3 + 2 + 3 + 2
    assert "output\\n()" in nodes.values()


def test_to_dot_marks_the_skip_add_with_two_incoming_paths() -> None:
    y, leaves = _small_graph()
    nodes, edges = _nodes_and_edges(to_dot(y, leaves))
    (add_id,) = [n for n, label in nodes.items() if "skip rejoins" in label]
    incoming = [e for e in edges if e[1] == add_id]
    assert len(incoming) == 2
    (fork_id,) = [n for n, label in nodes.items() if "fans out" in label]
    assert nodes[fork_id].startswith("(2, 3)")
    assert len([e for e in edges if e[0] == fork_id]) == 2
    # the identity path is the direct edge fork -> add, drawn in the identity style; the other input is not
    styled = [e for e in incoming if "penwidth" in e[2]]
    assert [(e[0], e[1]) for e in styled] == [(fork_id, add_id)]


def test_to_dot_resnet_names_parameters_and_finds_every_block() -> None:
    mr.manual_seed(0)
    model = CifarResNet(8, num_classes=10, in_channels=1)
    out = model(mr.randn(2, 1, 8, 8)).sum()
    dot = to_dot(out, model)
    nodes, _ = _nodes_and_edges(dot)
    labels = list(nodes.values())
    for name, p in model.named_parameters():
        assert any(label.startswith(f"{name}\\n({', '.join(map(str, p.shape))}") for label in labels), name
    assert dot.count("skip rejoins") == 3  # one per BasicBlock (1 per stage at depth 8)
    assert "Conv2dBackward" in dot and "BatchNormReLUBackward" in dot  # BN + ReLU fused (no hooks watch them)
    assert dot.count("BatchNormAddReLUBackward\\nskip rejoins") == 3  # the fused tail is where the skip rejoins
    fused = dot
    with fast_kernels_off():  # the separate ops
        dot = to_dot(model(mr.randn(2, 1, 8, 8)).sum(), model)
    assert dot.count("AddBackward\\nskip rejoins") == 3 and "BatchNormTrainBackward" in dot and "ReLUBackward" in dot
    # option-A shortcut paths (GetItem, Pad) are on the identity path and styled, fused or not
    assert dot.count("penwidth") >= 3 + 2 * 3
    assert fused.count("penwidth") == dot.count("penwidth")


def test_to_dot_plain_network_has_no_skip() -> None:
    mr.manual_seed(0)
    model = CifarResNet(8, num_classes=10, in_channels=1, plain=True)
    dot = to_dot(model(mr.randn(2, 1, 8, 8)).sum(), model)
    assert "skip rejoins" not in dot and "penwidth" not in dot


def test_to_dot_leaf_and_bad_input() -> None:
    x = mr.tensor([1.0, 2.0], requires_grad=True)
    assert "leaf\\n(2)" in to_dot(x)
    with pytest.raises(TypeError):
        to_dot(np.ones(3))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        to_dot(x * 2, params=[x])


def test_render_without_graphviz_writes_dot_and_warns(tmp_path, monkeypatch) -> None:
    y, leaves = _small_graph()
    monkeypatch.setattr(graph_module.shutil, "which", lambda name: None)
    with pytest.warns(GraphvizNotFoundWarning, match="not installed"):
        result = render(y, tmp_path / "g.svg", leaves)
    assert result.image_path is None and not result.rendered
    assert (tmp_path / "g.dot").read_text().startswith("digraph")
    assert not (tmp_path / "g.svg").exists()
    with pytest.raises(ValueError, match="format"):
        render(y, tmp_path / "g.jpeg")


def test_render_with_graphviz_if_installed(tmp_path) -> None:
    if graph_module.shutil.which("dot") is None:
        pytest.skip("Graphviz 'dot' is not installed")
    y, leaves = _small_graph()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = render(y, tmp_path / "g.svg", leaves)
    assert result.rendered and (tmp_path / "g.svg").read_text().lstrip().startswith(("<?xml", "<svg"))


def _digits_like_batch(n: int = 4) -> tuple[mr.Tensor, mr.Tensor]:
    rng = np.random.default_rng(0)
    return mr.tensor(rng.normal(size=(n, 1, 8, 8))), mr.tensor(rng.integers(0, 10, n))


def test_gradient_flow_recorder_matches_grad_norms(tmp_path) -> None:
    mr.manual_seed(1)
    model = CifarResNet(8, num_classes=10, in_channels=1).double()
    x, y = _digits_like_batch()
    recorder = GradientFlowRecorder(model)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    model.zero_grad()
    loss.backward()
    records = recorder.records()
    layers = dict(recorder.layers)
    assert [r.name for r in records][:2] == ["conv1", "layer1.0.conv1"] and records[-1].name == "fc"
    assert [r.depth for r in records] == list(range(len(records)))
    assert len(records) == len(layers) == 8  # 7 convolutions + fc
    for r in records:
        grad = layers[r.name].weight.grad.numpy()
        assert r.weight_grad_norm == pytest.approx(np.linalg.norm(grad), rel=1e-12)
        assert r.weight_norm == pytest.approx(np.linalg.norm(layers[r.name].weight.numpy()), rel=1e-12)
        assert np.isfinite(r.output_grad_norm) and r.output_grad_norm > 0
    # the output gradient of fc is dL/dlogits = (softmax - onehot) / N
    logits = logits.numpy()
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(4), y.numpy()] -= 1
    assert records[-1].output_grad_norm == pytest.approx(np.linalg.norm(p / 4), rel=1e-9)
    path = plot_gradient_flow({"resnet-8": records}, tmp_path / "flow.png")
    assert (tmp_path / "flow.png").stat().st_size > 0 and path.endswith("flow.png")
    recorder.remove()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert recorder.records() == records  # removed: nothing new recorded


def test_gradient_flow_recorder_counts_repeated_calls() -> None:
    relu = nn.ReLU()
    lin = nn.Linear(3, 3).double()
    model = nn.Sequential(lin, relu, lin)
    with GradientFlowRecorder(model) as rec:
        model(mr.tensor(np.ones((2, 3)), requires_grad=True)).sum().backward()
        names = [r.name for r in rec.records()]
    assert names == ["0", "0#2"]


@pytest.mark.parametrize("preact", [False, True])
def test_skip_probe_identity_plus_branch_is_the_input_gradient(preact: bool) -> None:
    mr.manual_seed(2)
    model = CifarResNet(14, num_classes=10, in_channels=1, preact=preact).double()
    x, y = _digits_like_batch()
    probe = SkipProbe(model)
    F.cross_entropy(model(x), y).backward()
    records = probe.records()
    assert [r.block for r in records] == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1"]
    assert [r.shortcut for r in records] == ["identity", "identity", "option A", "identity", "option A", "identity"]
    for r in records:
        assert r.identity_grad.dtype == np.float64
        np.testing.assert_allclose(r.identity_grad + r.branch_grad, r.total_grad, rtol=1e-12, atol=1e-15)
        assert r.identity_norm > 0 and r.branch_norm > 0
        if r.shortcut == "identity":
            np.testing.assert_array_equal(r.identity_grad, r.out_grad)
    table = probe.table()
    assert set(table[0]) >= {"block", "identity_norm", "branch_norm", "total_norm", "ratio"}
    assert table[0]["ratio"] == pytest.approx(records[0].branch_norm / records[0].identity_norm)
    assert "layer3.1" in probe.format_table()


def test_skip_probe_total_matches_block_input_gradient_and_upstream_at_block_output() -> None:
    """Pre-activation block: the add's output is the block output, so identity grad == dL/d(block output)."""
    mr.manual_seed(3)
    block = PreActBasicBlock(3, 3).double()
    x = mr.tensor(np.random.default_rng(0).normal(size=(2, 3, 5, 5)), requires_grad=True)
    readout = np.random.default_rng(1).normal(size=(2, 3, 5, 5))
    with SkipProbe(block) as probe:
        out = block(x)
        out.retain_grad()
        (out * mr.tensor(readout)).sum().backward()
    (r,) = probe.records()
    np.testing.assert_array_equal(r.identity_grad, readout)  # dL/dy = readout, passed down unchanged
    np.testing.assert_array_equal(r.identity_grad, out.grad.numpy())
    np.testing.assert_allclose(r.total_grad, x.grad.numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(r.identity_grad + r.branch_grad, x.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_skip_probe_does_not_change_gradients_and_rejects_plain() -> None:
    mr.manual_seed(4)
    model = CifarResNet(8, num_classes=10, in_channels=1).double()
    x, y = _digits_like_batch()
    F.cross_entropy(model(x), y).backward()
    before = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
    model.zero_grad()
    with SkipProbe(model):
        F.cross_entropy(model(x), y).backward()
    # The probe's hooks make the blocks run their separate modules instead of the fused BatchNorm ops, whose
    # per-channel sums may add in another order: the same gradients to rounding (and the same values exactly
    # when the fused ops are off too).
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), before[n], rtol=1e-12, atol=1e-16)
    with fast_kernels_off():
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        unfused = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
        model.zero_grad()
        with SkipProbe(model):
            F.cross_entropy(model(x), y).backward()
        for n, p in model.named_parameters():
            np.testing.assert_array_equal(p.grad.numpy(), unfused[n])
    with pytest.raises(ValueError, match="plain"):
        SkipProbe(CifarResNet(8, in_channels=1, plain=True))


def test_skip_probe_projection_shortcut_block() -> None:
    from minires.models import projection_shortcut

    mr.manual_seed(5)
    block = BasicBlock(3, 6, stride=2, downsample=projection_shortcut(3, 6, 2)).double()
    x = mr.tensor(np.random.default_rng(0).normal(size=(2, 3, 6, 6)), requires_grad=True)
    with SkipProbe(block) as probe:
        (block(x) ** 2).sum().backward()
    (r,) = probe.records()
    assert r.shortcut == "projection" and r.split_at == "x"
    np.testing.assert_allclose(r.identity_grad + r.branch_grad, x.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_skip_table_footnote_names_the_shortcut_that_reads_the_preactivation() -> None:
    rows = [
        {"block": "layer1.0", "shortcut": "identity", "split_at": "x", "out_norm": 1.0, "identity_norm": 1.0,
         "branch_norm": 0.5, "total_norm": 1.2, "ratio": 0.5, "cosine": 0.1},
        {"block": "layer2.0", "shortcut": "option A", "split_at": "relu(bn1(x))", "out_norm": 1.0, "identity_norm": 1.0,
         "branch_norm": 0.5, "total_norm": 1.2, "ratio": 0.5, "cosine": 0.1},
    ]
    text = format_skip_table(rows)
    assert "layer2.0*" in text and "layer1.0*" not in text
    footnote = text.splitlines()[-1]
    assert footnote.startswith("*") and "option A" in footnote and "projection" not in footnote


def test_param_names_from_a_module_and_from_a_mapping() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    names = param_names(model)
    assert names == {id(p): name for name, p in [("0.weight", model[0].weight), ("0.bias", model[0].bias),
                                                  ("2.weight", model[2].weight), ("2.bias", model[2].bias)]}
    w = mr.randn(2, 2)
    assert param_names({"w": w}) == {id(w): "w"}
    assert param_names(None) == {}
    with pytest.raises(TypeError, match="must be a Module or a"):
        param_names([w])
