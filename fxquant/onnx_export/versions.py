"""Which ONNX opsets the export can write, and the IR version that goes with each.

The file pins the IR version that matches its opset (IR 7 for opsets 13 and 14) instead of the
newest IR the installed ``onnx`` writes, so runtimes as old as the opset load the file.
"""

from __future__ import annotations

import onnx

from ..errors import OpsetError

DEFAULT_OPSET = 14
# DequantizeLinear / QuantizeLinear gained the ``axis`` attribute (per-channel scales) in opset 13.
PER_AXIS_OPSET = 13
# DynamicQuantizeLinear, the one op dynamic mode cannot do without, arrived in opset 11.
DYNAMIC_QUANT_OPSET = 11
# The TorchScript exporter (see docs/onnx.md for why it is the front end) writes up to opset 20.
try:
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as MAX_OPSET
except ImportError:  # pragma: no cover - the constant moved
    MAX_OPSET = 20


def ir_version_for(opset: int) -> int:
    """The lowest IR version whose ONNX release introduced ``opset`` of the default domain."""
    try:
        return int(onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)]))
    except ValueError as exc:
        raise OpsetError(f"onnx {onnx.__version__} does not know opset {opset}: {exc}") from None


def check_opset(opset: int, needs_per_axis: bool, needs_dynamic: bool) -> None:
    """Refuse an opset that cannot express the scheme; the message names the opset needed."""
    if not isinstance(opset, int) or isinstance(opset, bool):
        raise OpsetError(f"opset must be an integer, got {opset!r}.")
    if opset > MAX_OPSET:
        raise OpsetError(
            f"opset {opset} is above {MAX_OPSET}, the newest opset fxquant's exporter writes; "
            f"use opset={DEFAULT_OPSET} (the default) or any opset up to {MAX_OPSET}."
        )
    if needs_per_axis and opset < PER_AXIS_OPSET:
        raise OpsetError(
            f"opset {opset} cannot express per-channel quantization: DequantizeLinear takes an "
            f"'axis' (one scale per channel or per row) only from opset {PER_AXIS_OPSET}. Export "
            f"with opset >= {PER_AXIS_OPSET} (default {DEFAULT_OPSET}), or quantize with "
            "QuantConfig(weight_granularity='per_tensor', quantize_embeddings=False)."
        )
    if needs_dynamic and opset < DYNAMIC_QUANT_OPSET:
        raise OpsetError(
            f"opset {opset} has no DynamicQuantizeLinear, which dynamic mode needs; export with "
            f"opset >= {DYNAMIC_QUANT_OPSET} (default {DEFAULT_OPSET})."
        )
