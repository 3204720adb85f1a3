"""The front end: run the TorchScript ONNX exporter with fxquant's placeholder symbolics.

Why this exporter (docs/onnx.md has the measurements): it writes opsets 7 to 20 natively, so an
opset-14 file needs no version conversion, and it covers every torch op the benchmark and
Hugging Face models use (``scaled_dot_product_attention`` included). The dynamo exporter writes
opset 18 and cannot convert down (LayerNormalization has no opset-14 form). Writing ONNX from the
FX graph by hand would mean re-implementing the translation of every torch op a model may use.
"""

from __future__ import annotations

import io
import itertools
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import onnx
import torch
from torch import nn

from ..errors import ExportError, OpsetError
from . import symbolics
from .write import EXTERNAL_DATA_THRESHOLD

# The exporter warns that it is the legacy path on every call; fxquant chose it on purpose.
_QUIET = ("legacy TorchScript-based ONNX export", "will be removed")


def _run_exporter(model: nn.Module, inputs: tuple[Any, ...], buffer: io.BytesIO | str,
                  opset: int, input_names: Sequence[str], output_names: Sequence[str],
                  dynamic_axes: Mapping[str, Mapping[int, str]]) -> None:
    with warnings.catch_warnings(), symbolics.registered(opset), torch.no_grad():
        for text in _QUIET:
            warnings.filterwarnings("ignore", message=f".*{text}.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # The exporter's own remarks on how it lowered an op (e.g. advanced indexing).
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx\..*")
        # torch types ``f`` as a path, but the TorchScript exporter (dynamo=False) also writes
        # to a file-like object (its own _export says so), which is how the file stays in memory.
        torch.onnx.export(
            model, inputs, buffer,  # type: ignore[arg-type]
            dynamo=False,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
            do_constant_folding=True,
            custom_opsets={symbolics.DOMAIN: 1},
        )


def trace_to_onnx(
    model: nn.Module,
    inputs: tuple[Any, ...],
    *,
    opset: int,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
) -> onnx.ModelProto:
    """An ONNX model of ``model`` in which each fxquant op is one placeholder node."""
    args = (opset, input_names, output_names, dynamic_axes)
    try:
        if state_bytes(model) <= EXTERNAL_DATA_THRESHOLD:
            buffer = io.BytesIO()
            _run_exporter(model, inputs, buffer, *args)
            return onnx.load_model_from_string(buffer.getvalue())
        # Over 2 GB the exporter writes a file with external data; read it back whole.
        with tempfile.TemporaryDirectory(prefix="fxquant-trace-") as folder:
            path = f"{folder}/traced.onnx"
            _run_exporter(model, inputs, path, *args)
            return onnx.load(path)
    except ExportError:
        raise
    except torch.onnx.errors.UnsupportedOperatorError as exc:
        raise OpsetError(
            f"torch.onnx cannot export {type(model).__name__} at opset {opset}: {exc}"
        ) from exc
    except Exception as exc:
        message = str(exc).split("\n", 1)[0][:500]
        raise ExportError(
            f"torch.onnx could not export {type(model).__name__} at opset {opset}: "
            f"{type(exc).__name__}: {message}. If an op is missing at this opset, try a newer "
            "opset (up to 20)."
        ) from exc


def state_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (each tensor counted once)."""
    seen: dict[int, int] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())
