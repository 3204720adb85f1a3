"""Per-layer error reports of quantized models (``fxquant.error_report``).

    layers.py        a converted model's quantized layers, each runnable on its own
    onnx_layers.py   the same layers cut out of an exported ONNX file, run by ONNX Runtime
    error_report.py  fp32 vs fake quant vs int8 vs ONNX Runtime per layer; table, JSON, plot
    plot.py          the report's bar chart
"""

from __future__ import annotations

from .error_report import ErrorReport, Errors, LayerError, error_report, first_float_output

__all__ = ["ErrorReport", "Errors", "LayerError", "error_report", "first_float_output"]
