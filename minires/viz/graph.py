"""Pictures of the autograd graph: :func:`to_dot` writes Graphviz DOT text, :func:`render` draws it.

Every tensor made by an op carries ``grad_fn``, the :class:`~minires.autograd.function.Node` that
recorded the op; ``node.edges`` point back to the nodes (or leaf tensors) that made its inputs. Walking
those edges from an output reaches everything the output depends on. The picture draws it in the
direction of the *forward* pass, inputs at the top::

    leaf parameter (named)  --->  op (e.g. Conv2dBackward)  --->  tensor (shape)  --->  next op ...

Gradients travel the same arrows in reverse. A tensor with two or more outgoing arrows *fans out*
(its gradient is the sum of what comes back along each); an ``Add`` (or a residual block's fused
``BatchNormAddReLU`` tail) whose two summands trace back to the same tensor is where a skip connection
*rejoins*. Such adds are drawn orange, the fork tensor yellow, and the short (identity) path between
them green and bold, so the residual structure of a ResNet stands out in the picture. (The blocks run
BN + ReLU and BN + add + ReLU as fused ops unless hooks watch them; under
``minires.ops.cuda.fast_kernels_off()`` the graph shows the separate ops.)

Only tensors that require grad are in the graph: an input image without ``requires_grad`` or the
labels of a loss leave no trace (the engine records no edge for them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from minires.autograd.engine import topological_order
from minires.autograd.function import Edge, LeafEdge, Node, gradient_edge
from minires.tensor import Tensor

# What ``params`` may be: a Module (its named_parameters are used) or a {name: tensor} mapping.
ParamNames = Union[Mapping[str, Tensor], Any, None]  # noqa: UP007 - a runtime alias, kept valid on 3.10

IMAGE_FORMATS = ("svg", "png", "pdf")

_OP_STYLE = 'shape=box, style="rounded,filled", fillcolor="#dde8f7"'
_SKIP_ADD_STYLE = 'shape=box, style="rounded,filled,bold", fillcolor="#f9b56b", color="#c45f00"'
_TENSOR_STYLE = 'shape=ellipse, style=filled, fillcolor="#f2f2f2", fontsize=10'
_FORK_STYLE = 'shape=ellipse, style="filled,bold", fillcolor="#fff0a0", fontsize=10'
_PARAM_STYLE = 'shape=box, style=filled, fillcolor="#cfe9c7", fontsize=10'
_LEAF_STYLE = 'shape=box, style=filled, fillcolor="#e8e8e8", fontsize=10'
_OUTPUT_STYLE = 'shape=ellipse, style="filled,bold", fillcolor="#f7c6c6", fontsize=10'
_IDENTITY_EDGE = 'color="#2a9d3a", penwidth=2.5'


class GraphvizNotFoundWarning(UserWarning):
    """:func:`render` could not draw an image because the Graphviz ``dot`` program is not installed."""


def param_names(params: ParamNames) -> dict[int, str]:
    """``{id(tensor): name}`` from a Module (via ``named_parameters``) or a ``{name: tensor}`` mapping."""
    if params is None:
        return {}
    if hasattr(params, "named_parameters"):
        params = dict(params.named_parameters())
    if not isinstance(params, Mapping):
        raise TypeError(f"to_dot: params must be a Module or a {{name: tensor}} mapping, got {type(params).__name__}")
    return {id(t): name for name, t in params.items()}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


@dataclass
class _Graph:
    """The graph in a form easy to draw: ids for ops and tensors, and forward-direction edges."""

    ops: list[Node]
    op_ids: dict[int, str]
    # tensor key -> (dot id, label, kind): key is ("out", id(node), index) or ("leaf", id(tensor))
    tensors: dict[tuple[Any, ...], tuple[str, str, str]]
    producer: dict[tuple[Any, ...], Node]  # intermediate tensor key -> the op that made it
    inputs: dict[int, list[tuple[Any, ...] | None]]  # id(op) -> key of each positional input (None: no grad)


def _collect(root: Tensor, names: dict[int, str]) -> _Graph:
    ops = list(reversed(topological_order(root.grad_fn)))  # inputs first: the order of the forward pass
    op_ids = {id(node): f"op{i}" for i, node in enumerate(ops)}
    tensors: dict[tuple[Any, ...], tuple[str, str, str]] = {}
    producer: dict[tuple[Any, ...], Node] = {}
    inputs: dict[int, list[tuple[Any, ...] | None]] = {}

    def add_tensor(key: tuple[Any, ...], label: str, kind: str) -> None:
        if key not in tensors:
            tensors[key] = (f"t{len(tensors)}", label, kind)

    for node in ops:
        keys: list[tuple[Any, ...] | None] = []
        for edge in node.edges:
            if edge is None:
                keys.append(None)
                continue
            if isinstance(edge, LeafEdge):
                leaf = edge.tensor
                key: tuple[Any, ...] = ("leaf", id(leaf))
                name = names.get(id(leaf))
                label = f"{name}\n{_shape(leaf.shape)}" if name else f"leaf {_shape(leaf.shape)}"
                add_tensor(key, label, "param" if name else "leaf")
            else:
                key = ("out", id(edge.node), edge.output_index)
                add_tensor(key, _shape(edge.node.output_meta[edge.output_index][0]), "tensor")
                producer[key] = edge.node
            keys.append(key)
        inputs[id(node)] = keys
    root_edge = gradient_edge(root)
    if not isinstance(root_edge, Edge):  # to_dot draws a leaf itself before it gets here
        raise ValueError("_collect: the root is a leaf tensor; it has no graph to collect")
    root_key = ("out", id(root_edge.node), root_edge.output_index)
    name = names.get(id(root))
    tensors.pop(root_key, None)
    tensors[root_key] = (f"t{len(tensors)}", f"{name or 'output'}\n{_shape(root.shape)}", "output")
    producer[root_key] = root.grad_fn
    return _Graph(ops, op_ids, tensors, producer, inputs)


def _ancestors(graph: _Graph, start: tuple[Any, ...]) -> dict[tuple[Any, ...], tuple[tuple[Any, ...], Node] | None]:
    """Breadth-first walk back from tensor ``start``: ``{tensor key: (next key towards start, op)}``.

    BFS visits each tensor first along a path with the fewest ops, so following the recorded links
    from an ancestor leads to ``start`` along a shortest path.
    """
    seen: dict[tuple[Any, ...], tuple[tuple[Any, ...], Node] | None] = {start: None}
    queue = deque([start])
    while queue:
        key = queue.popleft()
        node = graph.producer.get(key)
        if node is None:
            continue
        for parent_key in graph.inputs.get(id(node), []):
            if parent_key is not None and parent_key not in seen:
                seen[parent_key] = (key, node)
                queue.append(parent_key)
    return seen


def _path_length(link: dict[tuple[Any, ...], tuple[tuple[Any, ...], Node] | None], key: tuple[Any, ...]) -> int:
    steps = 0
    while link[key] is not None:
        key = link[key][0]  # type: ignore[index]
        steps += 1
    return steps


@dataclass
class SkipJoin:
    """One rejoining add found in the graph: where the paths fork, and which input is the short one."""

    add: Node
    fork: tuple[Any, ...]  # key of the tensor where the two paths split
    identity_input: int  # which argument of the add the short (identity) path reaches
    identity_edges: list[tuple[tuple[Any, ...], Node]]  # (tensor, op it feeds) along the short path


# Ops that add their first two inputs: the plain add, and the fused BN + add + ReLU tail of a residual block
# (its inputs are the branch before its last BatchNorm, the shortcut, then the BN's weight and bias).
_ADDING_OPS = ("Add", "BatchNormAddReLU")


def _find_skip_joins(graph: _Graph) -> list[SkipJoin]:
    """Every add (``Add``, or the fused ``BatchNormAddReLU``) whose two summands share an ancestor tensor:
    a skip connection rejoining."""
    order = {key: i for i, key in enumerate(graph.tensors)}  # first seen = earlier in the forward pass
    joins: list[SkipJoin] = []
    for node in graph.ops:
        keys = graph.inputs[id(node)]
        if node.name not in _ADDING_OPS or len(keys) < 2 or keys[0] is None or keys[1] is None:
            continue
        keys = keys[:2]
        walks = [_ancestors(graph, k) for k in keys]
        common = [k for k in walks[0] if k in walks[1]]
        if not common:
            continue
        # The latest common ancestor in forward order is where the two paths split.
        fork = max(common, key=lambda k: order.get(k, -1))
        lengths = [_path_length(w, fork) for w in walks]
        short = 0 if lengths[0] <= lengths[1] else 1
        edges: list[tuple[tuple[Any, ...], Node]] = []
        key = fork
        while walks[short][key] is not None:
            nxt, op = walks[short][key]  # type: ignore[misc]
            edges.append((key, op))
            key = nxt
        edges.append((key, node))
        joins.append(SkipJoin(node, fork, short, edges))
    return joins


def to_dot(tensor: Tensor, params: ParamNames = None, title: str | None = None, rankdir: str = "TB") -> str:
    """The autograd graph behind ``tensor`` as Graphviz DOT text.

    ``params`` names the leaf tensors: a Module (``named_parameters`` gives ``layer1.0.conv1.weight``)
    or a ``{name: tensor}`` mapping (to name inputs too: ``{**dict(model.named_parameters()), "x": x}``).
    Op nodes are labelled ``<Function>Backward`` (the backward the engine will run), tensor nodes with
    their shapes. Skip connections are marked: orange add where two paths rejoin, yellow fork tensor,
    green bold identity path. ``rankdir="LR"`` lays the graph out left to right.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"to_dot: expected a Tensor, got {type(tensor).__name__}")
    names = param_names(params)
    lines = [
        "digraph autograd {", f"  rankdir={rankdir};",
        '  graph [fontname="Helvetica"]; node [fontname="Helvetica"];', '  edge [color="#555555"];',
    ]
    if title:
        lines.append(f"  labelloc=t; label={_quote(title)};")
    if tensor.grad_fn is None:
        label = f"{names.get(id(tensor), 'leaf')}\n{_shape(tensor.shape)}"
        lines += [f"  t0 [label={_quote(label)}, {_LEAF_STYLE}];", "}"]
        return "\n".join(lines) + "\n"

    graph = _collect(tensor, names)
    joins = _find_skip_joins(graph)
    skip_adds = {id(j.add) for j in joins}
    forks = {j.fork for j in joins}
    identity_edges = {(key, id(op)) for j in joins for key, op in j.identity_edges}
    identity_tensors = {key for j in joins for key, _ in j.identity_edges if key != j.fork}

    styles = {"tensor": _TENSOR_STYLE, "param": _PARAM_STYLE, "leaf": _LEAF_STYLE, "output": _OUTPUT_STYLE}
    for key, (dot_id, label, kind) in graph.tensors.items():
        style = _FORK_STYLE if key in forks else styles[kind]
        if key in forks:
            label += "\n(fans out)"
        lines.append(f"  {dot_id} [label={_quote(label)}, {style}];")
    for node in graph.ops:
        op_id = graph.op_ids[id(node)]
        if id(node) in skip_adds:
            lines.append(f"  {op_id} [label={_quote(node.name + 'Backward' + chr(10) + 'skip rejoins')}, {_SKIP_ADD_STYLE}];")
        else:
            lines.append(f"  {op_id} [label={_quote(node.name + 'Backward')}, {_OP_STYLE}];")
    for node in graph.ops:
        op_id = graph.op_ids[id(node)]
        for key in graph.inputs[id(node)]:
            if key is None:
                continue
            attrs = f" [{_IDENTITY_EDGE}]" if (key, id(node)) in identity_edges else ""
            lines.append(f"  {graph.tensors[key][0]} -> {op_id}{attrs};")
        for index in range(len(node.output_meta)):
            key = ("out", id(node), index)
            if key in graph.tensors:
                attrs = f" [{_IDENTITY_EDGE}]" if key in identity_tensors else ""
                lines.append(f"  {op_id} -> {graph.tensors[key][0]}{attrs};")
    lines.append("}")
    return "\n".join(lines) + "\n"


@dataclass
class RenderResult:
    """What :func:`render` wrote: always the DOT file; the image only when Graphviz is installed."""

    dot_path: str
    image_path: str | None
    message: str

    @property
    def rendered(self) -> bool:
        return self.image_path is not None


def render(tensor: Tensor, path: str | os.PathLike[str], params: ParamNames = None, title: str | None = None,
           rankdir: str = "TB") -> RenderResult:
    """Write the graph of ``tensor`` to ``path`` (``.svg``, ``.png`` or ``.pdf``; ``.dot`` for text only).

    The DOT text always goes next to it (``graph.svg`` -> ``graph.dot``). The image needs the Graphviz
    ``dot`` program (``apt install graphviz`` / ``brew install graphviz``); without it a
    :class:`GraphvizNotFoundWarning` is issued and ``RenderResult.image_path`` is None.
    """
    path = os.fspath(path)
    stem, suffix = os.path.splitext(path)
    fmt = suffix.lstrip(".").lower() or "svg"
    if fmt != "dot" and fmt not in IMAGE_FORMATS:
        raise ValueError(f"render: unknown image format {fmt!r} (from {path!r}); use .svg, .png, .pdf or .dot")
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    dot_path = stem + ".dot"
    with open(dot_path, "w", encoding="utf-8") as f:
        f.write(to_dot(tensor, params, title=title, rankdir=rankdir))
    if fmt == "dot":
        return RenderResult(dot_path, None, f"wrote {dot_path}")
    image_path = stem + "." + fmt
    program = shutil.which("dot")
    if program is None:
        message = (f"wrote {dot_path}; no image: the Graphviz 'dot' program is not installed "
                   f"(install graphviz, then run: dot -T{fmt} {dot_path} -o {image_path})")
        warnings.warn(message, GraphvizNotFoundWarning, stacklevel=2)
        return RenderResult(dot_path, None, message)
    done = subprocess.run([program, f"-T{fmt}", dot_path, "-o", image_path], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"render: dot failed on {dot_path} (exit {done.returncode}): {done.stderr.strip()}")
    return RenderResult(dot_path, image_path, f"wrote {dot_path} and {image_path}")
