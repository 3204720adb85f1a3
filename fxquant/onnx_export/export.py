"""``export_onnx``: a converted GraphModule to a standard ONNX file, in five steps.

    trace      the TorchScript exporter, fxquant ops as placeholders         (.trace, .symbolics)
    lower      placeholders -> the ONNX patterns ONNX Runtime fuses          (.lower, .lower_*)
    describe   metadata_props + quantization_annotation                      (.metadata)
    finalize   ai.onnx only, IR version of the opset, full onnx.checker       (.finalize)
    validate   on request: ONNX Runtime vs the function the file encodes     (.validate)

The file is written to a temporary file in the target folder and moved into place only when
every step succeeded, so a failed export leaves no file at ``path``.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.fx as fx
from torch import nn
from torch.utils import _pytree as pytree

from .. import ops
from ..errors import ExportError
from ..passes.pack_weights import portable_model
from . import checks
from .dynamic_shapes import traceable_sizes
from .finalize import finalize
from .lower import Lowered, lower_placeholders
from .metadata import accuracy_metadata, build_metadata, write_metadata
from .scheme import resolve_scheme
from .trace import trace_to_onnx
from .validate import ValidationReport, run_validation, twin_of
from .versions import DEFAULT_OPSET

BATCH_AXIS = "batch"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote."""

    path: Path
    size_bytes: int
    mode: str
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    validation: ValidationReport | None


def _input_names(model: nn.Module, count: int) -> list[str]:
    if isinstance(model, fx.GraphModule):
        names = [str(n.target) for n in model.graph.nodes if n.op == "placeholder"]
    else:
        names = list(inspect.signature(model.forward).parameters)
    names = [n.lstrip("*") for n in names][:count]
    return names + [f"input_{i}" for i in range(len(names), count)]


class _FlatOutputs(nn.Module):
    """Returns the model's output tensors as one flat tuple (for dict / ModelOutput results)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(pytree.tree_leaves(self.model(*args)))


def _axes(
    inputs: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_batch: bool,
    extra: Mapping[str, Mapping[int, str]] | None,
) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    if dynamic_batch:
        for name, tensor in zip(input_names, inputs, strict=True):
            if tensor.dim() > 0:
                axes[name] = {0: BATCH_AXIS}
        for name in output_names:
            axes[name] = {0: BATCH_AXIS}
    for name, more in (extra or {}).items():
        axes.setdefault(name, {}).update(more)
    return axes


def _sources(subject: checks.Subject, root: str) -> dict[str, str]:
    """Initializer name (the exporter names buffers by state_dict key) -> layer name."""
    out: dict[str, str] = {}
    for name, gm in subject.converted:
        prefix = ".".join(p for p in (root, name) if p)
        for node in gm.graph.nodes:
            if node.op != "call_function" or node.target not in ops.ALL_OPS:
                continue
            source = node.meta.get("fxquant", {}).get("source")
            for arg in node.args:
                if source and isinstance(arg, fx.Node) and arg.op == "get_attr":
                    out.setdefault(f"{prefix}.{arg.target}" if prefix else str(arg.target), source)
    return out


def _write_atomically(data: bytes, target: Path) -> None:
    folder = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ExportError(f"cannot write {target}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise ExportError(f"cannot write {target}: {exc}") from exc
        raise


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: Any,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    validate: bool = False,
    matmul_weights: str = "auto",
    matmul_nbits: bool = False,
) -> ExportResult:
    """Export a model quantized by fxquant (any mode) as a standard ONNX file.

    Args:
        model: a GraphModule returned by ``fxquant.quantize`` / ``fxquant.convert`` (or a module
            containing one). A model fxquant did not convert is exported as float32, with a
            warning; a prepared (observed) model is refused.
        path: the file to write. Nothing is written there unless the whole export succeeds.
        example_inputs: a tuple of tensors (or one tensor) the model accepts; traced once.
        opset: the ``ai.onnx`` opset (13..20; per-channel scales need >= 13). The IR version
            is the one that goes with it (7 for opset 14).
        dynamic_batch: make axis 0 of every input and output a dynamic ``batch`` dimension.
        dynamic_axes: more dynamic axes, e.g. ``{"input_ids": {1: "seq"}, "output": {1: "seq"}}``.
        input_names / output_names: graph names (default: the forward's argument names;
            ``output`` or ``output_0``, ``output_1``...).
        validate: run ONNX Runtime on ``example_inputs`` and compare with the model (bounds in
            :mod:`fxquant.onnx_export.validate`); ``ExportError`` when out of bounds.
        matmul_weights: codes type of the weights of integer layers (dynamic and static):
            ``"auto"`` (int8 -- ONNX Runtime's own pattern -- where no pair of codes can
            saturate an AVX2 kernel, as fxquant's default pair-safe scales guarantee; uint8
            otherwise, exact on every CPU), ``"int8"`` or ``"uint8"``. See
            :mod:`fxquant.onnx_export.scheme`.
        matmul_nbits: write group-wise 4-bit weights as ONNX Runtime's ``com.microsoft``
            ``MatMulNBits`` (packed codes, computed in 4 bits) instead of the standard opset-14
            dequantization (int8 codes, folded to float at load); see
            :mod:`fxquant.onnx_export.lower_grouped`. The file then imports ``com.microsoft``.

    Returns:
        an :class:`ExportResult` (path, size, names, and the validation report if requested).
    """
    # Tracing runs the model under torch.jit tracing, and some models (Hugging Face transformers)
    # keep state from such a run: measured, a MiniLM exported in place gave different embeddings
    # afterwards. The export works on a copy, so the user's model is never changed.
    # portable_model copies, and turns packed runtime regions back into fxquant ops.
    subject = checks.inspect_model(portable_model(model))
    # The validation reference gets a copy of its own, never run under tracing (see above).
    untraced = checks.inspect_model(portable_model(model)) if validate else None
    target = checks.check_path(path)
    checks.check_opset_for(subject, opset)
    scheme = resolve_scheme(subject.config, matmul_weights, matmul_nbits, opset)
    inputs, outputs = checks.check_example_inputs(subject, example_inputs)
    in_names = list(input_names) if input_names else _input_names(subject.model, len(inputs))
    out_names = list(output_names) if output_names else list(outputs.names)
    if len(in_names) != len(inputs) or len(out_names) != len(outputs.names):
        raise ExportError(
            f"{len(in_names)} input names for {len(inputs)} inputs, {len(out_names)} output names "
            f"for {len(outputs.names)} outputs: pass one name per tensor."
        )
    traced = subject.model if outputs.flat else _FlatOutputs(subject.model)
    axes = _axes(inputs, in_names, out_names, dynamic_batch, dynamic_axes)
    with traceable_sizes(subject.model) if axes else contextlib.nullcontext():
        proto = trace_to_onnx(
            traced,
            inputs,
            opset=opset,
            input_names=in_names,
            output_names=out_names,
            dynamic_axes=axes,
        )
    sources = _sources(subject, "" if outputs.flat else "model")
    lowered = lower_placeholders(proto, sources, scheme)
    _describe(proto, subject, lowered)
    finalize(proto, opset, {name for dims in axes.values() for name in dims.values()},
             allow_contrib=scheme.matmul_nbits)
    data = proto.SerializeToString()
    mode = subject.config.mode if subject.config else "float"
    report = None
    if untraced is not None:
        report = run_validation(
            data,
            twin_of(untraced.model, untraced.converted),
            untraced.model,
            inputs,
            in_names,
            out_names,
            mode,
        )  # compares flattened outputs
    _write_atomically(data, target)
    return ExportResult(target, len(data), mode, opset, tuple(in_names), tuple(out_names), report)


def _describe(proto: onnx.ModelProto, subject: checks.Subject, lowered: Lowered) -> None:
    source_class = str(subject.record.get("source_class", type(subject.model).__name__))
    props = build_metadata(
        subject.config, subject.record, source_class, lowered.codes_types, len(lowered.weights)
    )
    props.update(accuracy_metadata(subject.config, lowered.grouped))
    write_metadata(proto, props, lowered.annotations)
    proto.graph.name = source_class
    proto.doc_string = (
        f"{source_class} quantized by fxquant ({props['fxquant.mode']}); "
        "see metadata_props and graph.quantization_annotation."
    )
