"""Static conv layers: write the float bias as an int32 ``DequantizeLinear``, as for linears.

Requires: a lowered graph. Applies to a ``Conv`` whose input is a ``DequantizeLinear`` with a
constant scalar scale (a static activation), whose weight is a ``DequantizeLinear`` of constant
codes, and whose bias is a float initializer.
Guarantees: the bias becomes ``DequantizeLinear(int32, x_scale * w_scale)`` rounded by
:func:`.bias.quantize_bias`, which the export twin rounds identically.
Why: ONNX Runtime quantizes such a bias itself when it loads the file (its
``WeightBiasQuantization`` transformer); doing it here makes that rounding part of the file, where
validation can account for it, instead of a runtime surprise that flips activation codes.
"""

from __future__ import annotations

import onnx

from .activation import int32_bias_tensor
from .bias import quantize_bias
from .builder import GraphBuilder


def _producers(nodes: list[onnx.NodeProto]) -> dict[str, onnx.NodeProto]:
    return {out: node for node in nodes for out in node.output}


def _static_dq_scale(b: GraphBuilder, node: onnx.NodeProto | None) -> str | None:
    if node is None or node.op_type != "DequantizeLinear":
        return None
    scale = b.constant(node.input[1])
    return scale if scale is not None and b.array(scale).size == 1 else None


def quantize_conv_biases(b: GraphBuilder) -> int:
    """Rewrite eligible conv biases in ``b.nodes``; returns how many."""
    producers = _producers(b.nodes)
    convs = [n for n in b.nodes if n.op_type == "Conv"]
    start = len(b.nodes)
    done = 0
    for node in convs:
        if node.op_type != "Conv" or len(node.input) < 3 or b.constant(node.input[2]) is None:
            continue
        x_scale = _static_dq_scale(b, producers.get(node.input[0]))
        w_dq = producers.get(node.input[1])
        if x_scale is None or w_dq is None or w_dq.op_type != "DequantizeLinear":
            continue
        w_scale = b.constant(w_dq.input[1])
        if w_scale is None or b.constant(w_dq.input[0]) is None:
            continue
        quantized = quantize_bias(b.array(node.input[2]), b.array(x_scale), b.array(w_scale))
        if quantized is None:
            continue
        base = w_dq.name.rpartition("/")[0] or node.name or "conv"
        node.input[2] = int32_bias_tensor(
            b, *quantized, base=base, per_channel=b.array(w_scale).size > 1
        )
        done += 1
    # The bias DequantizeLinear nodes read only initializers: they can run first.
    emitted = b.nodes[start:]
    del b.nodes[start:]
    b.nodes[:0] = emitted
    return done
