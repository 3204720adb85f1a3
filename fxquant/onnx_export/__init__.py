"""ONNX export of converted GraphModules: standard ``ai.onnx`` files with int8 weights.

    fxquant.export_onnx(qmodel, "model.onnx", example_inputs)   # opset 14, IR 7, dynamic batch
    fxquant.onnx_info("model.onnx")                             # what a file holds, as a dict
    ort_generate("model.onnx", input_ids, attention_mask)       # a causal LM's decoder file:
                                                                # greedy tokens, KV cache in ORT

How the file is made (one module per step; docs/onnx.md has the why):
    trace.py, symbolics.py     TorchScript exporter; each fxquant op becomes a placeholder node
    lower.py, lower_*.py       placeholders -> the patterns ONNX Runtime fuses into int8 kernels
    weights.py, activation.py  int8 initializers (layout, names, sharing); activation quantization
    scheme.py                  int8 or uint8 weights for integer matmuls (AVX2 saturation)
    metadata.py, finalize.py   metadata_props, quantization_annotation, IR/opset, onnx.checker
    validate.py, twin.py       ONNX Runtime vs the function the file encodes (the export twin)
    spec.py, decoder.py        what is traced: the model as called, or a causal LM as a decoder
                               with its KV cache (Optimum's layout)
    write.py                   atomic writing, external data over 2 GB
    generate.py                ort_generate: greedy decoding of a decoder file in ONNX Runtime
    checks.py, pipeline.py     argument checks; export_onnx, the steps in order
    info.py                    onnx_info
    subgraphs.py               the one walk into control-flow bodies (If / Loop / Scan)
"""

from __future__ import annotations

from ..errors import OpsetError
from .decoder import DecoderLayout
from .generate import DecoderSession, ort_generate
from .info import onnx_info
from .metadata import read_annotations, read_metadata
from .pipeline import ExportResult, export_onnx, validate_onnx
from .validate import ValidationReport, ort_session

__all__ = [
    "DecoderLayout",
    "DecoderSession",
    "ExportResult",
    "OpsetError",
    "ValidationReport",
    "export_onnx",
    "onnx_info",
    "ort_generate",
    "ort_session",
    "read_annotations",
    "read_metadata",
    "validate_onnx",
]
