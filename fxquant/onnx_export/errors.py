"""The export's own error type; every other failure uses :mod:`fxquant.errors`."""

from __future__ import annotations

from ..errors import ExportError


class OpsetError(ExportError, ValueError):
    """The requested opset cannot express the quantization scheme (or the exporter lacks it)."""
