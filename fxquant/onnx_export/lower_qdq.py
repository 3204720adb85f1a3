"""Lower the stand-alone quantize / dequantize placeholders (conv layers and any matmul the
fusion pass left unfused): each is one standard ONNX op.

    dequantize_weight      DequantizeLinear(W, scale, zp, axis)   -> the conv's float weight
    fake_quantize_dynamic  DynamicQuantizeLinear -> DequantizeLinear
    quantize_activation    QuantizeLinear(uint8) with the model's scale and zero-point
    dequantize_activation  DequantizeLinear with the tensors of the QuantizeLinear feeding it
"""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import ExportError
from .activation import dequantize, dynamic_quantize, static_quantize
from .context import LoweringContext


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def lower_dequantize_weight(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """``dequantize_weight`` -> DequantizeLinear of the stored codes (along ``axis``)."""
    codes, scale, zp = node.input[:3]
    w = ctx.weights.get(codes, scale, zp, "stored", axis=int(_attrs(node)["axis"]))
    dequantize(ctx.b, w.codes, w.scale, w.zero_point, w.source, out=node.output[0], axis=w.axis)


def lower_fake_quantize_dynamic(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """``fake_quantize_dynamic`` -> DynamicQuantizeLinear -> DequantizeLinear."""
    x = node.input[0]
    q, s, z = dynamic_quantize(ctx.b, x, x)
    dequantize(ctx.b, q, s, z, x, out=node.output[0])


def _remember_qparams(ctx: LoweringContext, q: str, scale: str, zero_point: str) -> None:
    """Record the scale and zero-point tensors of the ``QuantizeLinear`` that wrote ``q``."""
    ctx.b.remember(("qparams", q), (scale, zero_point))


def _qparams(ctx: LoweringContext, q: str) -> tuple[str, str] | None:
    """(scale, zero-point) tensors of the ``QuantizeLinear`` that wrote ``q``, or None."""
    found: tuple[str, str] | None = ctx.b.memo(("qparams", q))
    return found


def lower_quantize_activation(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """``quantize_activation`` -> QuantizeLinear to uint8 with the model's scale and zero-point."""
    a = _attrs(node)
    x = node.input[0]
    q, s, z = static_quantize(
        ctx.b, x, float(np.float32(a["scale"])), int(a["zero_point"]), x, out=node.output[0]
    )
    _remember_qparams(ctx, q, s, z)


def lower_dequantize_activation(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """``dequantize_activation`` -> DequantizeLinear with its QuantizeLinear's tensors."""
    q = node.input[0]
    params = _qparams(ctx, q)
    if params is None:
        raise ExportError(
            f"dequantize_activation reads {q!r}, which no fxquant quantize_activation produced; "
            "fxquant only exports the quantize -> dequantize pairs its own passes insert."
        )
    scale, zero_point = params
    dequantize(ctx.b, q, scale, zero_point, base=q, out=node.output[0])
