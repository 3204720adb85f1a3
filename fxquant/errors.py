"""The exceptions fxquant raises.

Every error a user can provoke is an :class:`FxQuantError`. Each message names the layer or input at
fault and says what to do, so nobody has to read a tracer traceback to find the cause.
"""

from __future__ import annotations


class FxQuantError(Exception):
    """Base class of every error fxquant raises on bad input."""


class ConfigError(FxQuantError, ValueError):
    """The QuantConfig asks for something impossible (unknown mode, bad bit width, ...)."""


class CaptureError(FxQuantError):
    """The model could not be captured as a graph."""


class ExampleInputError(FxQuantError, ValueError):
    """The example inputs do not fit the model."""


class NonFiniteError(FxQuantError, ValueError):
    """A weight or calibration tensor holds NaN or Inf."""


class CalibrationError(FxQuantError):
    """Calibration could not produce activation ranges (for example: no batches)."""


class AlreadyQuantizedError(FxQuantError):
    """The model was already quantized by fxquant."""


class PassError(FxQuantError):
    """A compiler pass failed; the message says which pass and which passes ran before it."""


class ExportError(FxQuantError):
    """An ONNX export could not be written or validated."""


class OpsetError(ExportError, ValueError):
    """The requested opset cannot express the quantization scheme (or the exporter lacks it)."""


class SaveLoadError(FxQuantError):
    """A quantized model could not be saved or loaded: a model fxquant cannot replay, or a float
    skeleton that does not match the saved model."""


class FormatError(SaveLoadError, ValueError):
    """A saved folder is not a readable fxquant save: damaged, truncated, from a newer fxquant,
    pickles only, or tensors missing / unexpected."""
