"""Lower the stand-alone quantize / dequantize placeholders (conv layers and any matmul the
fusion pass left unfused): each is one standard ONNX op.

    dequantize_weight      DequantizeLinear(W int8, scale, zp, axis)   -> the conv's float weight
    fake_quantize_dynamic  DynamicQuantizeLinear -> DequantizeLinear
    quantize_activation    QuantizeLinear(uint8)  (8-bit; see :mod:`.activation`)
    dequantize_activation  DequantizeLinear with the parameters of the QuantizeLinear feeding it
"""

from __future__ import annotations

import onnx

from ..errors import ExportError
from .activation import dequantize, dynamic_quantize, static_quantize
from .context import LoweringContext


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def lower_dequantize_weight(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    b, weights = ctx.b, ctx.weights
    codes, scale, zp = node.input[:3]
    w = weights.get(codes, scale, zp, "stored", axis=int(_attrs(node)["axis"]))
    dequantize(b, w.codes, w.scale, w.zero_point, w.source, out=node.output[0], axis=w.axis)


def lower_fake_quantize_dynamic(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    b, weights = ctx.b, ctx.weights
    x = node.input[0]
    q, s, z = dynamic_quantize(b, x, x)
    dequantize(b, q, s, z, x, out=node.output[0])


def lower_quantize_activation(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    b, weights = ctx.b, ctx.weights
    a = _attrs(node)
    x = node.input[0]
    scale, zp, rr = ctx.policy.static(a["scale"], a["zero_point"], bool(a["reduce_range"]))
    q, s, z = static_quantize(b, x, scale, zp, rr, x, out=node.output[0])
    b.remember(("qparams", q), (s, z))


def lower_dequantize_activation(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    b, weights = ctx.b, ctx.weights
    q = node.input[0]
    params = b.memo(("qparams", q))
    if params is None:
        raise ExportError(
            f"dequantize_activation reads {q!r}, which no fxquant quantize_activation produced; "
            "fxquant only exports the quantize -> dequantize pairs its own passes insert."
        )
    dequantize(b, q, *params, q, out=node.output[0])
