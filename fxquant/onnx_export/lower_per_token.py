"""Lower per-token dynamic activations (``QuantConfig.activation_granularity="per_token"``).

Each row of ``x`` is divided by its abs-max (floored at the smallest normal float, as the
reference kernel does), the result is quantized as a dynamic layer's input, and the matmul's
output is multiplied back by the row scales::

    r = Max(ReduceMax(Abs(x), axes=[-1], keepdims=1), tiny)     xs = Div(x, r)   (one per x)
    DynamicQuantizeLinear(xs) -> MatMulInteger -> Cast -> Mul(xs_scale * w_scale) -> Mul(r)
      -> Add(bias)

The part from ``DynamicQuantizeLinear`` to the first ``Mul`` is a dynamic layer's own pattern,
which ONNX Runtime fuses into ``DynamicQuantizeMatMul``.
"""

from __future__ import annotations

import numpy as np
import onnx

from .activation import FLOAT, dequantize, dynamic_quantize
from .builder import GraphBuilder
from .context import LoweringContext
from .lower_linear import _bias, _weight


def token_scaled(b: GraphBuilder, x: str, opset: int) -> tuple[str, str]:
    """(x / r, r) with r each row's abs-max; one pair per distinct ``x``."""
    key = ("per_token", x)
    found = b.memo(key)
    if found is None:
        (a,) = b.node("Abs", [x], base=x)
        if opset >= 18:
            axes = b.initializer(f"{x}.token_axes", np.array([-1], dtype=np.int64))
            (m,) = b.node("ReduceMax", [a, axes], base=x, keepdims=1)
        else:
            (m,) = b.node("ReduceMax", [a], base=x, axes=[-1], keepdims=1)
        floor = b.initializer(f"{x}.token_floor", np.array(np.finfo(np.float32).tiny, np.float32))
        (r,) = b.node("Max", [m, floor], base=x)
        (xs,) = b.node("Div", [x, r], base=x)
        found = b.remember(key, (xs, r))
    return found


def lower_linear_dynamic_per_token(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """``linear_dynamic_per_token`` -> x over its row scales, a dynamic layer, Mul(r)."""
    b = ctx.b
    w = _weight(ctx, node)
    xs, r = token_scaled(b, node.input[0], ctx.scheme.opset)
    xq, x_scale, xz = dynamic_quantize(b, xs, w.source)
    (scales,) = b.node("Mul", [x_scale, w.scale], base=w.source)
    (acc,) = b.node("MatMulInteger", [xq, w.codes, xz, w.zero_point], base=w.source)
    (acc_f,) = b.node("Cast", [acc], base=w.source, to=FLOAT)
    (y,) = b.node("Mul", [acc_f, scales], base=w.source)
    bias = _bias(node)
    if bias is None:
        b.node("Mul", [y, r], [node.output[0]], base=w.source)
    else:
        (y,) = b.node("Mul", [y, r], base=w.source)
        b.node("Add", [y, ctx.weights.bias(bias, w.source)], [node.output[0]], base=w.source)


def lower_fake_quantize_dynamic_per_token(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """``fake_quantize_dynamic_per_token`` -> row-scaled x quantized, dequantized, scaled back."""
    b = ctx.b
    xs, r = token_scaled(b, node.input[0], ctx.scheme.opset)
    q, s, z = dynamic_quantize(b, xs, xs)
    dq = dequantize(b, q, s, z, xs)
    b.node("Mul", [dq, r], [node.output[0]], base=xs)
