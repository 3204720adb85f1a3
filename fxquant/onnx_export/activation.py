"""Activations in the ONNX file: always 8-bit unsigned (codes 0..255).

Why not the GraphModule's 7-bit codes when ``reduce_range`` is on: ``reduce_range`` exists for
PyTorch's fbgemm kernel on AVX2 CPUs without VNNI, whose ``vpmaddubsw`` saturates with full 8-bit
activations. The ONNX file is for whichever runtime and CPU deploys it: ``DynamicQuantizeLinear``
only produces 0..255, ONNX Runtime's own quantizer uses 0..255, and a 7-bit range would double the
activation rounding error of the file. So a static layer's calibrated range, recovered from its
7-bit scale and zero-point, is re-quantized to 256 levels here, and dynamic layers quantize with
``DynamicQuantizeLinear``. The consequence for parity (docs/onnx.md): the file computes the
GraphModule's function with 8-bit instead of 7-bit activations, so it is compared with that
function (:mod:`.reference`), and differs from the 7-bit GraphModule by up to the GraphModule's own
activation rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from .. import numerics
from .builder import GraphBuilder


@dataclass(frozen=True)
class ActivationPolicy:
    """How the file quantizes activations.

    ``static_codes``: ``"model"`` keeps a static layer's calibrated parameters, 7-bit codes
    included (a ``Clip`` before ``QuantizeLinear`` keeps the codes in 0..127); ``"uint8"``
    re-quantizes the same range to 256 levels. Dynamic layers always use
    ``DynamicQuantizeLinear``, which is 8-bit.
    """

    static_codes: Literal["model", "uint8"] = "model"
    matmul_weights: Literal["int8", "uint8"] = "int8"

    def dynamic_reduce_range(self, reduce_range: bool) -> bool:
        return False

    def static(self, scale: float, zero_point: int, reduce_range: bool) -> tuple[float, int, bool]:
        """(scale, zero-point, reduce_range) of a static activation in the file."""
        scale32 = float(np.float32(scale))
        if self.static_codes == "model" or not reduce_range:
            return scale32, int(zero_point), reduce_range
        qr = numerics.activation_qrange(reduce_range)
        lo = (qr.qmin - zero_point) * scale
        hi = (qr.qmax - zero_point) * scale
        new_scale, new_zp = numerics.activation_qparams(lo, hi, reduce_range=False)
        return float(np.float32(new_scale)), new_zp, False


def dynamic_quantize(b: GraphBuilder, x: str, base: str) -> tuple[str, str, str]:
    """``DynamicQuantizeLinear(x)`` -> (codes, scale, zero-point); one per distinct ``x``."""
    key = ("dynamic", x)
    found = b.memo(key)
    if found is None:
        outs = [b.fresh(f"{x}_quantized"), b.fresh(f"{x}_scale"), b.fresh(f"{x}_zero_point")]
        found = tuple(b.node("DynamicQuantizeLinear", [x], outs, base=base))
        b.annotate(*found)
        b.remember(key, found)
    return found


def _clip_to_codes(b: GraphBuilder, x: str, scale: float, zero_point: int, base: str) -> str:
    """Clip ``x`` to the float range that 7-bit codes 0..127 represent."""
    qr = numerics.activation_qrange(True)
    lo = np.array((qr.qmin - zero_point) * scale, dtype=np.float32)
    hi = np.array((qr.qmax - zero_point) * scale, dtype=np.float32)
    lo_name = b.initializer(f"{base}.act_min", lo)
    hi_name = b.initializer(f"{base}.act_max", hi)
    (y,) = b.node("Clip", [x, lo_name, hi_name], base=base)
    return y


def static_quantize(b: GraphBuilder, x: str, scale: float, zero_point: int, reduce_range: bool,
                    base: str, out: str | None = None) -> tuple[str, str, str]:
    """``QuantizeLinear(x)`` with fixed uint8 parameters -> (codes, scale, zero-point) tensors;
    one per distinct (x, parameters) unless ``out`` names the codes tensor. With
    ``reduce_range`` the input is clipped first so the codes stay in 0..127, as in PyTorch."""
    key = ("static", x, scale, zero_point, reduce_range, out)
    found = b.memo(key)
    if found is None:
        if reduce_range:
            x = _clip_to_codes(b, x, scale, zero_point, base)
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


def static_qdq(b: GraphBuilder, x: str, scale: float, zero_point: int, reduce_range: bool,
               base: str) -> str:
    """``QuantizeLinear -> DequantizeLinear`` on an activation (the QDQ form ONNX Runtime fuses
    into its integer kernels); one pair per distinct (x, parameters)."""
    key = ("qdq", x, scale, zero_point, reduce_range)
    found = b.memo(key)
    if found is None:
        q, s, z = static_quantize(b, x, scale, zero_point, reduce_range, base)
        found = b.remember(key, dequantize(b, q, s, z, base))
    return found


FLOAT = onnx.TensorProto.FLOAT
