"""Lower the three fused linear placeholders to the patterns ONNX Runtime fuses.

dynamic (what ``onnxruntime.quantization.quantize_dynamic`` writes; ONNX Runtime fuses it into
``DynamicQuantizeMatMul``, or ``MatMulIntegerToFloat`` where several layers share one input)::

    x -> DynamicQuantizeLinear -> (xq, xs, xz)        one per distinct x (q, k, v share it)
    MatMulInteger(xq, W[in,out], xz, w_zp) -> Cast(float) -> Mul(xs * w_scale) -> Add(bias)

static (QDQ, with the bias as int32 at scale x_scale * w_scale, as ONNX Runtime's own QDQ
quantizer writes it; fused into ``QGemm`` for 2-D inputs and ``MatMulIntegerToFloat`` otherwise.
A float bias would leave 2-D layers as a float ``Gemm`` on dequantized weights)::

    x -> QuantizeLinear -> DequantizeLinear -> MatMul(., DequantizeLinear(W, axis=1))
      -> Add(DequantizeLinear(bias int32))

weight-only (fused into ``MatMulNBits``)::

    MatMul(x, DequantizeLinear(W, axis=1)) -> Add(bias)
"""

from __future__ import annotations

import numpy as np
import onnx

from .activation import FLOAT, dequantize, dynamic_quantize, int32_bias_tensor, static_qdq
from .bias import quantize_bias
from .builder import GraphBuilder
from .context import LoweringContext
from .weights import OnnxWeight


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _weight(ctx: LoweringContext, node: onnx.NodeProto) -> OnnxWeight:
    codes, scale, zp = node.input[1:4]
    return ctx.weights.get(codes, scale, zp, "transposed")


def _bias(node: onnx.NodeProto) -> str | None:
    return node.input[4] if len(node.input) > 4 and node.input[4] else None


def _last(
    ctx: LoweringContext,
    node: onnx.NodeProto,
    w: OnnxWeight,
    op_type: str,
    inputs: list[str],
    bias: str | None,
) -> None:
    """The matmul's last op, then the bias (if any); the result takes the placeholder's name."""
    b, out = ctx.b, node.output[0]
    if bias is None:
        b.node(op_type, inputs, [out], base=w.source)
    else:
        (y,) = b.node(op_type, inputs, base=w.source)
        b.node("Add", [y, bias], [out], base=w.source)


def _dequantized_weight(b: GraphBuilder, w: OnnxWeight) -> str:
    key = ("dq_weight", w.codes)
    found = b.memo(key)
    if found is None:
        found = b.remember(key, dequantize(b, w.codes, w.scale, w.zero_point, w.source,
                                           out=b.fresh(f"{w.source}.weight"), axis=w.axis))
    return found


def _int32_bias(ctx: LoweringContext, bias: str, x_scale: str, w: OnnxWeight) -> str:
    """``DequantizeLinear(int32 bias)`` (see :mod:`.bias`); the float bias if it does not fit."""
    b = ctx.b
    quantized = quantize_bias(b.array(bias), b.array(x_scale), b.array(w.scale))
    if quantized is None:
        return ctx.weights.bias(bias, w.source)
    codes, scale = quantized
    return int32_bias_tensor(b, codes, scale, w.source, per_channel=w.axis is not None)


def lower_linear_dynamic(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """``linear_dynamic`` -> DynamicQuantizeLinear, MatMulInteger, Cast, Mul [, Add]."""
    b = ctx.b
    w = _weight(ctx, node)
    xq, xs, xz = dynamic_quantize(b, node.input[0], w.source)
    (scales,) = b.node("Mul", [xs, w.scale], base=w.source)
    (acc,) = b.node("MatMulInteger", [xq, w.codes, xz, w.zero_point], base=w.source)
    (acc_f,) = b.node("Cast", [acc], base=w.source, to=FLOAT)
    bias = _bias(node)
    _last(
        ctx,
        node,
        w,
        "Mul",
        [acc_f, scales],
        None if bias is None else ctx.weights.bias(bias, w.source),
    )


def lower_linear_static(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """``linear_static`` -> QuantizeLinear, DequantizeLinear, MatMul [, Add of int32 bias]."""
    a = _attrs(node)
    w = _weight(ctx, node)
    x, x_scale = static_qdq(
        ctx.b, node.input[0], float(np.float32(a["x_scale"])), int(a["x_zero_point"]), w.source
    )
    bias = _bias(node)
    _last(
        ctx,
        node,
        w,
        "MatMul",
        [x, _dequantized_weight(ctx.b, w)],
        None if bias is None else _int32_bias(ctx, bias, x_scale, w),
    )


def lower_linear_weight_only(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """``linear_weight_only`` -> MatMul(x, DequantizeLinear(W)) [, Add]."""
    w = _weight(ctx, node)
    bias = _bias(node)
    _last(
        ctx,
        node,
        w,
        "MatMul",
        [node.input[0], _dequantized_weight(ctx.b, w)],
        None if bias is None else ctx.weights.bias(bias, w.source),
    )
