"""The one walk into control-flow bodies (fxquant/onnx_export/subgraphs.py)."""

from __future__ import annotations

from onnx import TensorProto, helper

from fxquant.onnx_export.subgraphs import all_nodes, nested_nodes, subgraphs


def _graph():
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    inner = helper.make_graph([helper.make_node("Neg", ["x"], ["y"], name="inner")], "inner", [],
                              [out])
    middle = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], name="middle", then_branch=inner, else_branch=inner)],
        "middle", [], [out])
    top = helper.make_node("Loop", ["n", "c"], ["y"], name="top", body=middle)
    return helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="first"), top], "g",
                             [], [out])


def test_walks_every_depth_in_order():
    graph = _graph()
    assert [n.name for n in all_nodes(graph)] == ["first", "top", "middle", "inner", "inner"]
    assert [n.name for n in nested_nodes(graph)] == ["middle", "inner", "inner"]
    assert [g.name for g in subgraphs(graph.node[1])] == ["middle"]
    assert list(subgraphs(graph.node[0])) == []
