"""Replace every placeholder node of the traced graph by standard ``ai.onnx`` nodes.

Requires: a model from :func:`.trace.trace_to_onnx` (placeholders in domain ``fxquant.onnx``).
Guarantees: no placeholder remains; each int8 weight is one INT8 initializer named
``<layer>.w_int8`` with its ``.w_scale`` / ``.w_zp``; the original buffers the placeholders read
are dropped; every quantized tensor is recorded with its scale and zero-point tensors (for
``GraphProto.quantization_annotation``).
Why: the exporter's constant folding would otherwise decide the layout and names of the weights;
writing the patterns here keeps them exactly the ones ONNX Runtime fuses, in one place per op.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import ExportError
from .builder import GraphBuilder
from .context import LoweringContext
from .conv_bias import quantize_conv_biases
from .lower_embedding import lower_embedding
from .lower_grouped import lower_dequantize_weight_grouped, lower_linear_weight_only_grouped
from .lower_linear import lower_linear_dynamic, lower_linear_static, lower_linear_weight_only
from .lower_per_token import (
    lower_fake_quantize_dynamic_per_token,
    lower_linear_dynamic_per_token,
)
from .lower_qdq import (
    lower_dequantize_activation,
    lower_dequantize_weight,
    lower_fake_quantize_dynamic,
    lower_quantize_activation,
)
from .scheme import ExportScheme
from .subgraphs import nested_nodes, subgraphs
from .symbolics import DOMAIN
from .weights import Layout, OnnxWeight, WeightTable, WeightUse, plan_weights

Rule = Callable[[LoweringContext, onnx.NodeProto], None]


@dataclass(frozen=True)
class _Placeholder:
    rule: Rule
    codes_input: int | None  # which input holds the int8 codes, if any
    layout: Layout


RULES: dict[str, _Placeholder] = {
    "linear_dynamic": _Placeholder(lower_linear_dynamic, 1, "transposed"),
    "linear_static": _Placeholder(lower_linear_static, 1, "transposed"),
    "linear_weight_only": _Placeholder(lower_linear_weight_only, 1, "transposed"),
    "embedding": _Placeholder(lower_embedding, 1, "stored"),
    "dequantize_weight": _Placeholder(lower_dequantize_weight, 0, "stored"),
    "fake_quantize_dynamic": _Placeholder(lower_fake_quantize_dynamic, None, "stored"),
    "quantize_activation": _Placeholder(lower_quantize_activation, None, "stored"),
    "dequantize_activation": _Placeholder(lower_dequantize_activation, None, "stored"),
    "linear_dynamic_per_token": _Placeholder(lower_linear_dynamic_per_token, 1, "transposed"),
    "fake_quantize_dynamic_per_token": _Placeholder(lower_fake_quantize_dynamic_per_token, None,
                                                    "stored"),
    # Group-wise weights have their own layout (lower_grouped.py), not the int8 weight table's.
    "linear_weight_only_grouped": _Placeholder(lower_linear_weight_only_grouped, None, "stored"),
    "dequantize_weight_grouped": _Placeholder(lower_dequantize_weight_grouped, None, "stored"),
}


@dataclass(frozen=True)
class Lowered:
    """What lowering produced besides the graph: the weights and the annotation records."""

    weights: tuple[OnnxWeight, ...]
    codes_types: frozenset[str]  # "int8" / "uint8": what the integer layers' weights use
    annotations: Mapping[str, tuple[str, str]]
    placeholders: Mapping[str, int]  # op name -> how many were lowered
    grouped: Mapping[str, int] = field(default_factory=dict)  # group-wise form -> layers


def _live(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` without those whose results nobody reads (e.g. the exporter's Identity copies
    of the int8 buffers the placeholders consumed)."""
    needed = set(outputs)
    keep = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
            for sub in subgraphs(node):  # names a control-flow body reads from outside
                needed.update(i for n in sub.node for i in n.input)
    return keep[::-1]


def _use(b: GraphBuilder, node: onnx.NodeProto, scheme: ExportScheme) -> WeightUse:
    rule = _rule(node)
    codes = node.input[rule.codes_input]
    array = b.array(codes) if b.constant(codes) else np.zeros((1, 1), np.int8)
    codes_type = scheme.codes_type(node.op_type, array)
    return WeightUse(codes, rule.layout, codes_type, scheme.is_integer(node.op_type))


def _rule(node: onnx.NodeProto) -> _Placeholder:
    if node.op_type not in RULES:
        raise ExportError(f"no ONNX lowering for fxquant op {node.op_type!r}.")
    return RULES[node.op_type]


def lower_placeholders(
    model: onnx.ModelProto, sources: Mapping[str, str], scheme: ExportScheme
) -> Lowered:
    """Lower in place; ``sources`` maps an int8 buffer's name to the layer it belongs to."""
    graph = model.graph
    nested = sorted({n.op_type for n in nested_nodes(graph) if n.domain == DOMAIN})
    if nested:
        raise ExportError(f"fxquant ops inside ONNX control flow are not supported: {nested}.")
    placeholders = [n for n in graph.node if n.domain == DOMAIN]
    b = GraphBuilder(graph)
    uses = [_use(b, n, scheme) for n in placeholders if _rule(n).codes_input is not None]
    weights = WeightTable(b, sources, plan_weights(uses))
    ctx = LoweringContext(b, weights, scheme)
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.domain == DOMAIN:
            _rule(node).rule(ctx, node)
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        else:
            b.keep(node)
    quantize_conv_biases(b)
    del graph.node[:]
    graph.node.extend(_live(b.nodes, {o.name for o in graph.output}))
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    del graph.initializer[:]
    graph.initializer.extend(t for name, t in b.initializers.items() if name in used)
    integer = frozenset(u.codes_type for u in uses if u.integer)
    return Lowered(tuple(weights.weights), integer, dict(b.annotations), counts,
                   dict(b.memo("grouped_forms") or {}))
