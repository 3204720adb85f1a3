"""Biases of static layers as int32 at scale ``x_scale * w_scale``, the form ONNX Runtime's
integer kernels add to their int32 accumulators (``QGemm``, ``QLinearConv``).

Both the lowering and the export twin (:mod:`.reference`) round through this one function, so the
twin adds exactly the bias the file holds; a bias rounded differently could flip an activation code
downstream and show up as a spurious parity error.
"""

from __future__ import annotations

import numpy as np

INT32_MAX = 2**31 - 1


def quantize_bias(
    bias: np.ndarray, x_scale: float | np.ndarray, w_scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """(int32 codes, float32 scale), or None when the bias does not fit in int32."""
    scale = np.float32(x_scale) * np.asarray(w_scale, dtype=np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    values = np.asarray(bias, dtype=np.float64) / safe.astype(np.float64)
    if np.abs(values).max(initial=0.0) > INT32_MAX:
        return None
    return np.round(values).astype(np.int32), safe


def rounded_bias(bias: np.ndarray, x_scale: float, w_scale: np.ndarray) -> np.ndarray:
    """The float bias the int32 form stands for (the bias itself if it does not fit)."""
    quantized = quantize_bias(bias, x_scale, w_scale)
    if quantized is None:
        return np.asarray(bias, dtype=np.float32)
    codes, scale = quantized
    return (codes.astype(np.float32) * scale).astype(np.float32)
