"""The one walk into an ONNX graph's control-flow bodies (the ``g`` / ``graphs`` attributes of
``If``, ``Loop`` and ``Scan``), for every step that must see nodes at any depth."""

from __future__ import annotations

from collections.abc import Iterator

import onnx


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs ``node`` holds in its attributes, in attribute order."""
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph``, each followed by the nodes of its bodies (depth first)."""
    for node in graph.node:
        yield node
        for sub in subgraphs(node):
            yield from all_nodes(sub)


def nested_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """The nodes inside ``graph``'s control-flow bodies, at any depth (not its own)."""
    for node in graph.node:
        for sub in subgraphs(node):
            yield from all_nodes(sub)
