"""fxquant: a torch.fx graph-rewriting quantization compiler.

    qmodel = fxquant.quantize(model, example_inputs)          # dynamic int8 by default
    qmodel = fxquant.quantize(model, example_inputs, calibration=batches,
                              config=fxquant.QuantConfig(mode="static"))
"""

from __future__ import annotations

from . import ops
from ._version import __version__
from .api import calibrate, convert, prepare, quantize
from .capture import capture
from .config import QuantConfig
from .errors import (
    AlreadyQuantizedError,
    CalibrationError,
    CaptureError,
    ConfigError,
    ExampleInputError,
    ExportError,
    FormatError,
    FxQuantError,
    NonFiniteError,
    PassError,
    SaveLoadError,
)
from .inputs import ModelInputs
from .mixed_precision import AccuracyTarget, MixedPrecisionResult, quantize_to_target
from .onnx_export import export_onnx, onnx_info
from .passes import portable_model as portable
from .qat import prepare_qat
from .record import QuantRecord, record_of
from .report import ErrorReport, error_report
from .serialize import load, save

__all__ = [
    "AccuracyTarget",
    "AlreadyQuantizedError",
    "CalibrationError",
    "CaptureError",
    "ConfigError",
    "ErrorReport",
    "ExampleInputError",
    "ExportError",
    "FormatError",
    "FxQuantError",
    "MixedPrecisionResult",
    "ModelInputs",
    "NonFiniteError",
    "PassError",
    "QuantConfig",
    "QuantRecord",
    "SaveLoadError",
    "__version__",
    "calibrate",
    "capture",
    "convert",
    "error_report",
    "export_onnx",
    "load",
    "onnx_info",
    "ops",
    "portable",
    "prepare",
    "prepare_qat",
    "quantize",
    "quantize_to_target",
    "record_of",
    "save",
]
