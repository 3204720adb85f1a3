"""``export_onnx``: a converted GraphModule to a standard ONNX file, in five steps.

    trace      the TorchScript exporter, fxquant ops as placeholders         (.trace, .symbolics)
    lower      placeholders -> the ONNX patterns ONNX Runtime fuses          (.lower, .lower_*)
    describe   metadata_props + quantization_annotation                      (.metadata)
    finalize   ai.onnx only, IR version of the opset, full onnx.checker       (.finalize)
    write      one file, or with external data over 2 GB                     (.write)
    validate   on request: ONNX Runtime vs the function the file encodes     (.validate)

What is traced is an :class:`.spec.ExportSpec`: the model as called with the example, or a causal
LM as a decoder with its KV cache (.decoder). The files are written to a temporary folder beside
the target and moved into place only when every step (validation included) succeeded, so a failed
export leaves no file at ``path``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch.fx as fx
from torch import nn

from .. import ops
from ..errors import ExportError
from ..passes import portable_model
from . import checks
from .decoder import decoder_spec, is_causal_lm, wants_kv_cache
from .dynamic_shapes import traceable_sizes
from .finalize import finalize
from .lower import Lowered, lower_placeholders
from .metadata import accuracy_metadata, build_metadata, read_metadata, write_metadata
from .scheme import resolve_scheme
from .spec import ExportSpec, plain_spec
from .trace import trace_to_onnx
from .twin import float_twin_of, twin_of
from .validate import ValidationReport, validate_cases
from .versions import DEFAULT_OPSET
from .write import staged


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote."""

    path: Path
    size_bytes: int  # the model file plus its external data, if any
    mode: str
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    validation: ValidationReport | None
    kv_cache: bool = False  # a decoder with its KV cache as inputs and outputs (decoder.py)
    external_data: Path | None = None  # the tensors' file, when not inside the model file


def _layer_name(region: str, source: str) -> str:
    """The layer's name in the model: a region that is one layer reads its own ``weight``."""
    if region and source in ("weight", "weight_t", ""):
        return region
    return ".".join(p for p in (region, source) if p)


def _sources(subject: checks.Subject, root: str) -> dict[str, str]:
    """Initializer name (the exporter names buffers by state_dict key) -> layer name."""
    out: dict[str, str] = {}
    for name, gm in subject.converted:
        prefix = ".".join(p for p in (root, name) if p)
        for node in gm.graph.nodes:
            if node.op != "call_function" or node.target not in ops.ALL_OPS:
                continue
            source = node.meta.get("fxquant", {}).get("source")
            source = _layer_name(name, source) if source is not None else None
            for arg in node.args:
                if source and isinstance(arg, fx.Node) and arg.op == "get_attr":
                    out.setdefault(f"{prefix}.{arg.target}" if prefix else str(arg.target), source)
    return out


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: Any,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    dynamic_sequence: bool = True,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    validate: bool = False,
    matmul_weights: str = "auto",
    matmul_nbits: bool = False,
    kv_cache: bool | None = None,
    all_logits: bool = False,
    external_data: bool | None = None,
    metadata: Mapping[str, str] | None = None,
    quantization_info: bool = True,
) -> ExportResult:
    """Export a model quantized by fxquant (any mode) as a standard ONNX file.

    Args:
        model: a GraphModule returned by ``fxquant.quantize`` / ``fxquant.convert``, a Hugging
            Face model quantized region by region (or a module containing one). A model fxquant
            did not convert is exported as float32, with a warning; a prepared (observed) model
            is refused.
        path: the file to write. Nothing is written there unless the whole export succeeds.
        example_inputs: a tuple of tensors (or one tensor) the model accepts, or a dict /
            tokenizer output whose keys are the forward's leading parameters; traced once. For a
            causal LM: ``{"input_ids": ids, "attention_mask": mask}``, ``(ids, mask)`` or ids.
        opset: the ``ai.onnx`` opset (13..20; per-channel scales need >= 13). The IR version
            is the one that goes with it (7 for opset 14).
        dynamic_batch: make axis 0 of every input and output a dynamic ``batch`` dimension.
        dynamic_sequence: make axis 1 of every token input (an integer [batch, sequence]
            tensor: ids, masks, token types) a dynamic ``sequence`` dimension.
        dynamic_axes: more dynamic axes, e.g. ``{"pixel_values": {2: "height"}}``.
        input_names / output_names: graph names (default: the forward's argument names;
            ``output`` or ``output_0``, ``output_1``...).
        validate: run ONNX Runtime on ``example_inputs`` (for a decoder: a prefill and three
            decode steps) and compare with the function the file encodes, in units of the
            model's activation rounding, padding excluded (:mod:`fxquant.onnx_export.validate`);
            ``ExportError`` when out of bounds.
        matmul_weights: codes type of the weights of integer layers (dynamic and static):
            ``"auto"`` (int8 -- ONNX Runtime's own pattern -- where no pair of codes can
            saturate an AVX2 kernel, as fxquant's default pair-safe scales guarantee; uint8
            otherwise, exact on every CPU), ``"int8"`` or ``"uint8"``. See
            :mod:`fxquant.onnx_export.scheme`.
        matmul_nbits: write group-wise 4-bit weights as ONNX Runtime's ``com.microsoft``
            ``MatMulNBits`` (packed codes, computed in 4 bits) instead of the standard opset-14
            dequantization (int8 codes, folded to float at load); see
            :mod:`fxquant.onnx_export.lower_grouped`. The file then imports ``com.microsoft``.
        kv_cache: export a causal LM as one decoder with its KV cache as inputs and outputs
            (Optimum's layout, :mod:`fxquant.onnx_export.decoder`); None: for every Hugging Face
            ``*ForCausalLM``. Then names and axes are the layout's own.
        all_logits: a decoder's ``logits`` for every position ([batch, sequence, vocab], for
            scoring) instead of the last one ([batch, 1, vocab], what generation reads).
        external_data: write the tensors to ``<path>.data`` beside the model file (ONNX external
            data); None: only when they exceed what one protobuf holds (2 GB).
        metadata: more ``metadata_props`` to write (string keys and values, e.g.
            ``{"model_name": "mnist"}``); they win over fxquant's keys of the same name.
        quantization_info: write fxquant's description of the quantization (the ``fxquant.*``
            ``metadata_props`` of docs/onnx.md and ``graph.quantization_annotation``). False
            writes only ``metadata``; the graph is the same.

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
    decoder = wants_kv_cache(subject.model, kv_cache)
    if decoder:
        spec = decoder_spec(subject.model, example_inputs, all_logits=all_logits)
    else:
        spec = plain_spec(subject, example_inputs, input_names=input_names,
                          output_names=output_names, dynamic_batch=dynamic_batch,
                          dynamic_sequence=dynamic_sequence, dynamic_axes=dynamic_axes,
                          without_cache=is_causal_lm(subject.model))
    with traceable_sizes(subject.model):
        proto = trace_to_onnx(spec.module, spec.inputs, opset=opset,
                              input_names=spec.input_names, output_names=spec.output_names,
                              dynamic_axes=spec.axes)
    lowered = lower_placeholders(proto, _sources(subject, spec.root), scheme)
    described = _describe_model(proto, subject, lowered, spec.metadata)
    if quantization_info:
        write_metadata(proto, {**described, **(metadata or {})}, lowered.annotations)
    else:
        write_metadata(proto, dict(metadata or {}), {})
    finalize(proto, opset, spec.axis_names, allow_contrib=scheme.matmul_nbits)
    mode = subject.config.mode if subject.config else "float"
    with staged(proto, target, external_data) as files:
        report = None
        if untraced is not None:
            report = _validate(files.model, [spec], untraced, mode, matmul_weights)
        size = files.size_bytes
        _, data = files.commit()
    return ExportResult(target, size, mode, opset, tuple(spec.input_names),
                        tuple(spec.output_names), report, decoder, data)


def _validate(
    path: Path, specs: Sequence[ExportSpec], untraced: checks.Subject, mode: str,
    matmul_weights: str,
) -> ValidationReport:
    """The file at ``path`` against the twin on the specs' validation cases (one twin for all:
    the specs differ only in their inputs)."""
    twin, floats = (twin_of(untraced.model, untraced.converted),
                    float_twin_of(untraced.model, untraced.converted))
    first = specs[0]
    cases = [case for spec in specs for case in spec.cases(spec.wrap(twin))]
    return validate_cases(path, cases, first.wrap(floats), first.input_names, first.output_names,
                          mode, matmul_weights)


def _read_file(target: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(target), load_external_data=False)
    except Exception as exc:
        raise ExportError(f"cannot read {target} as an ONNX model: {exc}") from exc


def _file_layout(target: Path, exported: ExportResult | None
                 ) -> tuple[str | None, list[str], list[str]]:
    """(the decoder layout's JSON or None, input names, output names) of the file: from what
    ``export_onnx`` returned for it where given (a plain file), else read from the file."""
    if exported is not None and not exported.kv_cache:
        return None, list(exported.input_names), list(exported.output_names)
    proto = _read_file(target)
    layout = read_metadata(proto).get("fxquant.kv_cache")
    inits = {t.name for t in proto.graph.initializer}
    return (layout if isinstance(layout, str) else None,
            [i.name for i in proto.graph.input if i.name not in inits],
            [o.name for o in proto.graph.output])


def validate_onnx(
    path: str | os.PathLike[str], model: nn.Module, example_inputs: Any, *,
    matmul_weights: str = "auto", more_inputs: Sequence[Any] = (),
    exported: ExportResult | None = None,
) -> ValidationReport:
    """Validate an ONNX file against ``model`` as ``export_onnx(validate=True)`` does: the file's
    outputs against the model's export twin on ``example_inputs`` (a decoder file, recognised by
    its ``fxquant.kv_cache`` metadata: a prefill and three decode steps), in units of the model's
    activation rounding. ``ExportError`` when out of bounds; the report otherwise.

    ``more_inputs``: further inputs of the example's form (e.g. other batch sizes), checked the
    same way in the same report (plain files). ``exported``: what ``export_onnx`` returned for
    this file; its input and output names are used instead of being read back from the file."""
    target = Path(path)
    layout, input_names, output_names = _file_layout(target, exported)
    subject = checks.inspect_model(portable_model(model))
    if layout is not None:
        specs = [decoder_spec(subject.model, example_inputs,
                              all_logits=bool(json.loads(layout).get("all_logits")))]
    else:
        specs = [plain_spec(subject, inputs, input_names=input_names, output_names=output_names,
                            dynamic_batch=True, dynamic_sequence=True, dynamic_axes=None,
                            without_cache=is_causal_lm(subject.model))
                 for inputs in (example_inputs, *more_inputs)]
    mode = subject.config.mode if subject.config else "float"
    return _validate(target, specs, subject, mode, matmul_weights)


def _describe_model(proto: onnx.ModelProto, subject: checks.Subject, lowered: Lowered,
                    extra: Mapping[str, str]) -> dict[str, str]:
    """Name the graph and say what it is (``doc_string``); returns fxquant's ``metadata_props``
    for it (docs/onnx.md), ``extra`` included."""
    source_class = str(subject.record.get("source_class", type(subject.model).__name__))
    props = build_metadata(
        subject.config, subject.record, source_class, lowered.codes_types, len(lowered.weights)
    )
    props.update(accuracy_metadata(subject.config, lowered.grouped))
    props.update(extra)
    proto.graph.name = source_class
    proto.doc_string = (
        f"{source_class} quantized by fxquant ({props['fxquant.mode']}); "
        "see metadata_props and graph.quantization_annotation."
    )
    return props
