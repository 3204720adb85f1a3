"""Lower the three fused linear placeholders to the patterns ONNX Runtime fuses.

dynamic (exactly what ``onnxruntime.quantization.quantize_dynamic`` writes, which ONNX Runtime
fuses into ``DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat``)::

    x -> DynamicQuantizeLinear -> (xq, xs, xz)        one per distinct x (q, k, v share it)
    MatMulInteger(xq, W[in,out] int8, xz, w_zp) -> Cast(float) -> Mul(xs * w_scale) -> Add(bias)

static (QDQ; fused into ``MatMulIntegerToFloat``)::

    x -> QuantizeLinear(uint8) -> DequantizeLinear -> MatMul(., DequantizeLinear(W, axis=1)) -> Add

weight-only::

    MatMul(x, DequantizeLinear(W, axis=1)) -> Add(bias)
"""

from __future__ import annotations

import onnx

from .activation import FLOAT, dequantize, dynamic_quantize, static_qdq
from .builder import GraphBuilder
from .context import LoweringContext
from .weights import OnnxWeight, WeightTable


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _weight(weights: WeightTable, node: onnx.NodeProto) -> OnnxWeight:
    codes, scale, zp = node.input[1:4]
    return weights.get(codes, scale, zp, "transposed")


def _last(b: GraphBuilder, weights: WeightTable, node: onnx.NodeProto, w: OnnxWeight,
          op_type: str, inputs: list[str]) -> None:
    """The matmul's last op, then the bias (if any); the result takes the placeholder's name."""
    out = node.output[0]
    if len(node.input) > 4 and node.input[4]:
        (y,) = b.node(op_type, inputs, base=w.source)
        b.node("Add", [y, weights.bias(node.input[4], w.source)], [out], base=w.source)
    else:
        b.node(op_type, inputs, [out], base=w.source)


def _dequantized_weight(b: GraphBuilder, w: OnnxWeight) -> str:
    key = ("dq_weight", w.codes)
    found = b.memo(key)
    if found is None:
        found = b.remember(key, dequantize(b, w.codes, w.scale, w.zero_point, w.source,
                                           out=b.fresh(f"{w.source}.weight"), axis=w.axis))
    return found


def lower_linear_dynamic(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    b, weights = ctx.b, ctx.weights
    w = _weight(weights, node)
    xq, xs, xz = dynamic_quantize(b, node.input[0], w.source)
    (scales,) = b.node("Mul", [xs, w.scale], base=w.source)
    (acc,) = b.node("MatMulInteger", [xq, w.codes, xz, w.zero_point], base=w.source)
    (acc_f,) = b.node("Cast", [acc], base=w.source, to=FLOAT)
    _last(b, weights, node, w, "Mul", [acc_f, scales])


def lower_linear_static(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    b, weights = ctx.b, ctx.weights
    a = _attrs(node)
    w = _weight(weights, node)
    scale, zp, rr = ctx.policy.static(a["x_scale"], a["x_zero_point"], bool(a["reduce_range"]))
    x = static_qdq(b, node.input[0], scale, zp, rr, w.source)
    _last(b, weights, node, w, "MatMul", [x, _dequantized_weight(b, w)])


def lower_linear_weight_only(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    b, weights = ctx.b, ctx.weights
    w = _weight(weights, node)
    _last(b, weights, node, w, "MatMul", [node.input[0], _dequantized_weight(b, w)])
