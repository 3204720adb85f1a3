"""Activation quantization in the file: ``DynamicQuantizeLinear`` for dynamic layers,
``QuantizeLinear`` with the model's calibrated parameters for static layers.

A static layer keeps the scale and zero-point the GraphModule uses, 7-bit ones included (see
:mod:`.scheme` for why). ``QuantizeLinear`` saturates at 0..255 where PyTorch clamps 7-bit codes
at 127; the two agree on every value inside the calibrated range, and beyond it the file keeps
more of the value instead of clipping it. (An explicit ``Clip`` would make them agree everywhere,
but ONNX Runtime then stops fusing the layer into its integer kernel.)
"""

from __future__ import annotations

import numpy as np
import onnx

from .builder import GraphBuilder

FLOAT = onnx.TensorProto.FLOAT


def dynamic_quantize(b: GraphBuilder, x: str, base: str) -> tuple[str, str, str]:
    """``DynamicQuantizeLinear(x)`` -> (codes, scale, zero-point); one per distinct ``x``, so
    layers reading the same input (attention's q, k, v) share it, as ONNX Runtime's do."""
    key = ("dynamic", x)
    found = b.memo(key)
    if found is None:
        outs = [b.fresh(f"{x}_quantized"), b.fresh(f"{x}_scale"), b.fresh(f"{x}_zero_point")]
        found = tuple(b.node("DynamicQuantizeLinear", [x], outs, base=base))
        b.annotate(*found)
        b.remember(key, found)
    return found


def static_quantize(
    b: GraphBuilder, x: str, scale: float, zero_point: int, base: str, out: str | None = None
) -> tuple[str, str, str]:
    """``QuantizeLinear(x)`` to uint8 with fixed parameters -> (codes, scale, zero-point); one
    per distinct (x, parameters) unless ``out`` names the codes tensor."""
    key = ("static", x, scale, zero_point, out)
    found = b.memo(key)
    if found is None:
        s = b.initializer(f"{base}.act_scale", np.array(scale, dtype=np.float32))
        z = b.initializer(f"{base}.act_zp", np.array(zero_point, dtype=np.uint8))
        (q,) = b.node("QuantizeLinear", [x, s, z], [out or b.fresh(f"{x}_quantized")], base=base)
        b.annotate(q, s, z)
        found = b.remember(key, (q, s, z))
    return found


def dequantize(b: GraphBuilder, q: str, scale: str, zero_point: str, base: str,
               out: str | None = None, axis: int | None = None) -> str:
    """``DequantizeLinear``; ``axis`` only for per-channel parameters."""
    attrs = {} if axis is None else {"axis": axis}
    (y,) = b.node("DequantizeLinear", [q, scale, zero_point], [out or b.fresh(f"{q}_dequantized")],
                  base=base, **attrs)
    return y


def static_qdq(
    b: GraphBuilder, x: str, scale: float, zero_point: int, base: str
) -> tuple[str, str]:
    """``QuantizeLinear -> DequantizeLinear`` on an activation, one pair per distinct
    (x, parameters): the QDQ form ONNX Runtime fuses into its integer kernels. Returns the
    dequantized tensor and the scale tensor."""
    key = ("qdq", x, scale, zero_point)
    found = b.memo(key)
    if found is None:
        q, s, z = static_quantize(b, x, scale, zero_point, base)
        found = b.remember(key, (dequantize(b, q, s, z, base), s))
    return found


def int32_bias_tensor(
    b: GraphBuilder, codes: np.ndarray, scale: np.ndarray, base: str, per_channel: bool
) -> str:
    """``DequantizeLinear`` of an int32 bias (codes and scale from :mod:`.bias`)."""
    scale = scale if per_channel else scale.reshape(-1)[:1].reshape(())
    q = b.initializer(f"{base}.bias_int32", codes)
    s = b.initializer(f"{base}.bias_scale", scale)
    z = b.initializer(f"{base}.bias_zp", np.zeros(scale.shape, np.int32))
    b.annotate(q, s, z)
    return dequantize(b, q, s, z, base, axis=0 if per_channel else None)
