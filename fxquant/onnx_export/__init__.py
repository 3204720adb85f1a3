"""ONNX export of converted GraphModules: standard ``ai.onnx`` files with int8 weights.

    fxquant.export_onnx(qmodel, "model.onnx", example_inputs)   # opset 14, IR 7, dynamic batch
    fxquant.onnx_info("model.onnx")                             # what a file holds, as a dict

How the file is made (one module per step; docs/onnx.md has the why):
    trace.py, symbolics.py     TorchScript exporter; each fxquant op becomes a placeholder node
    lower.py, lower_*.py       placeholders -> the patterns ONNX Runtime fuses into int8 kernels
    weights.py, activation.py  int8 initializers (layout, names, sharing); activation quantization
    scheme.py                  int8 or uint8 weights for integer matmuls (AVX2 saturation)
    metadata.py, finalize.py   metadata_props, quantization_annotation, IR/opset, onnx.checker
    validate.py, reference.py  ONNX Runtime vs the function the file encodes
    checks.py, export.py       argument checks; the export_onnx entry point
    info.py                    onnx_info
"""

from __future__ import annotations

from .errors import OpsetError
from .export import ExportResult, export_onnx
from .info import onnx_info
from .metadata import read_annotations, read_metadata
from .validate import ValidationReport

__all__ = [
    "ExportResult",
    "OpsetError",
    "ValidationReport",
    "export_onnx",
    "onnx_info",
    "read_annotations",
    "read_metadata",
]
