"""The graph's edges are named: ``Edge(node, output_index)`` for a tensor another op made,
``LeafEdge(tensor)`` for a leaf, ``None`` for an input that needs no gradient."""

from __future__ import annotations

import minires as mr
from minires.autograd.function import Edge, LeafEdge, gradient_edge


def test_edges_name_what_they_point_at() -> None:
    w = mr.randn(3, requires_grad=True)
    c = mr.randn(3)  # needs no gradient
    values, _ = mr.randn(2, 3, requires_grad=True).max(dim=0)  # output 0 of a two-output op
    y = (values * w + c).sum()
    add = y.grad_fn.edges[0].node
    mul_edge, const_edge = add.edges
    assert const_edge is None
    assert isinstance(mul_edge, Edge) and mul_edge.node.name == "Mul" and mul_edge.output_index == 0
    max_edge, leaf_edge = mul_edge.node.edges
    assert isinstance(leaf_edge, LeafEdge) and leaf_edge.tensor is w
    assert isinstance(max_edge, Edge) and max_edge.node is values.grad_fn and max_edge.output_index == 0


def test_gradient_edge_of_tensors() -> None:
    x = mr.randn(4, requires_grad=True)
    assert gradient_edge(x) == LeafEdge(x)
    _, idx = x.reshape(2, 2).max(dim=1)
    values = x.reshape(2, 2).max(dim=1).values
    assert gradient_edge(values) == Edge(values.grad_fn, 0)
    assert not idx.requires_grad
