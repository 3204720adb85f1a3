"""fxquant: a torch.fx graph-rewriting quantization compiler.

    qmodel = fxquant.quantize(model, example_inputs)          # dynamic int8 by default
    qmodel = fxquant.quantize(model, example_inputs, calibration=batches,
                              config=fxquant.QuantConfig(mode="static"))
"""

from __future__ import annotations

from . import ops
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
    FxQuantError,
    NonFiniteError,
    PassError,
)
from .inputs import ModelInputs
from .qat import prepare_qat
from .record import QuantRecord, record_of

__version__ = "0.1.0"

__all__ = [
    "AlreadyQuantizedError",
    "CalibrationError",
    "CaptureError",
    "ConfigError",
    "ExampleInputError",
    "ExportError",
    "FxQuantError",
    "ModelInputs",
    "NonFiniteError",
    "PassError",
    "QuantConfig",
    "QuantRecord",
    "__version__",
    "calibrate",
    "capture",
    "convert",
    "ops",
    "prepare",
    "prepare_qat",
    "quantize",
    "record_of",
]

# ONNX export (fxquant.onnx_export); imported last: it reads __version__.
from .onnx_export import export_onnx, onnx_info

__all__ += ["export_onnx", "onnx_info"]
