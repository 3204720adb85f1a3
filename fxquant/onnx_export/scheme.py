"""The export's one numerical choice: the codes type of the weights of integer matmuls.

ONNX Runtime's x86 integer GEMM for uint8 activations x int8 weights (U8S8) uses ``vpmaddubsw``
on CPUs without VNNI (AVX2 only: Intel before Cascade Lake / Alder Lake, AMD before Zen 4). That
instruction adds pairs of u8*s8 products in 16 bits and saturates: with activation codes up to
255 and weight codes up to +-127 a pair reaches 64,770 > 32,767. Measured on this project's AVX2
machine, a GPT-2-style model's logits came out 15% off, and ONNX Runtime's own
``quantize_dynamic`` files suffer the same. With weight codes within +-64 no pair can saturate
(255 * 64 * 2 = 32,640); more precisely, none can when every adjacent pair of codes along K sums
to at most 128 in magnitude, which fxquant's default pair-safe scales guarantee. With uint8 weights
(U8U8: codes and zero-points shifted by 128, the same values) ONNX Runtime widens to 16 bits first
and the product is exact on every CPU, at some speed cost on AVX2.

The file cannot know which CPU will run it, and its activation codes can always reach 255
(``DynamicQuantizeLinear`` is 8-bit; ``QuantizeLinear`` saturates at 255 even where the model's
calibrated codes stop at 127). So by default (``matmul_weights="auto"``) each integer layer is
checked: weights that cannot saturate (pair-safe codes) are written as int8 -- exactly the pattern
``onnxruntime.quantization.quantize_dynamic`` writes, and exact everywhere -- and wider ones as
uint8. ``"int8"`` forces ONNX Runtime's own pattern (fastest on VNNI CPUs, saturating on AVX2);
``"uint8"`` forces U8U8 everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..config import QuantConfig
from ..errors import ConfigError
from ..numerics import PAIR_SUM_LIMIT, pair_sums

CodesType = Literal["int8", "uint8"]
_CHOICES = ("auto", "int8", "uint8")
SAFE_WEIGHT_CODE = 64  # 255 * 64 * 2 = 32,640 <= 32,767: no 16-bit pair sum can overflow
# Placeholders whose weights meet quantized activations in an integer GEMM.
_INTEGER = {"linear_dynamic", "linear_static", "linear_dynamic_per_token"}


@dataclass(frozen=True)
class ExportScheme:
    """Resolved choices for one export."""

    mode: str
    matmul_weights: str  # "auto", "int8" or "uint8"
    # Group-wise 4-bit weights as ONNX Runtime's com.microsoft MatMulNBits (opt-in) instead of
    # the standard opset-14 dequantization (lower_grouped.py).
    matmul_nbits: bool = False
    opset: int = 14  # the ai.onnx opset the file is written for

    def is_integer(self, placeholder: str) -> bool:
        """Whether a placeholder's weights meet quantized activations in an integer kernel."""
        return placeholder in _INTEGER or (
            placeholder == "dequantize_weight" and self.mode == "static"
        )

    def codes_type(self, placeholder: str, codes: np.ndarray) -> CodesType:
        """The codes type for the weights (PyTorch layout) a placeholder reads."""
        if not self.is_integer(placeholder) or self.matmul_weights == "int8":
            return "int8"  # weight-only and embedding codes are only dequantized to float
        if self.matmul_weights == "uint8":
            return "uint8"
        return "int8" if cannot_saturate(placeholder, codes) else "uint8"


def cannot_saturate(placeholder: str, codes: np.ndarray) -> bool:
    """True when no 16-bit pair sum of ``vpmaddubsw`` can overflow for these weight codes.

    For the matmuls (``[N, K]`` codes, K pairs adjacent in the kernel, as in fbgemm) that is the
    pair-safe condition fxquant's default scales guarantee: ``|c[2k] + c[2k+1]| <= 128``. For
    anything else (conv kernels, whose packing we do not rely on) every code must be within +-64.
    """
    wide = torch.from_numpy(codes.astype(np.int32))
    if placeholder in _INTEGER and wide.dim() == 2:
        pairs = pair_sums(wide)  # fxquant's one pair-sum rule (the kernels' too)
        return int(pairs.amax()) <= PAIR_SUM_LIMIT if pairs.numel() else True
    return int(wide.abs().amax()) <= SAFE_WEIGHT_CODE if wide.numel() else True


def resolve_scheme(config: QuantConfig | None, matmul_weights: str,
                   matmul_nbits: bool = False, opset: int = 14) -> ExportScheme:
    """The export's choices from the model's config and export_onnx's arguments."""
    if matmul_weights not in _CHOICES:
        raise ConfigError(
            f"matmul_weights={matmul_weights!r}: choose 'auto' (int8 where the weight codes "
            "cannot saturate ONNX Runtime's AVX2 kernel, uint8 elsewhere), 'int8' or 'uint8'."
        )
    return ExportScheme(config.mode if config is not None else "float", matmul_weights,
                        bool(matmul_nbits), opset)
