"""Finalize the lowered model: default domain only, pinned IR version, clean value infos, and
``onnx.checker.check_model(full_check=True)``.

Requires: a lowered model (no placeholder left).
Guarantees: ``opset_import`` is exactly ``ai.onnx`` at the requested opset (plus ``com.microsoft``
when the export was asked for ONNX Runtime's ``MatMulNBits``); ``ir_version`` is the one that goes
with that opset; the file passes the full checker (which also runs strict shape inference; over
2 GB the writer runs it on the file). Any other node outside the default domain is an error
naming it.
"""

from __future__ import annotations

from collections.abc import Set

import onnx

from .._version import __version__
from ..errors import ExportError
from .subgraphs import all_nodes
from .versions import ir_version_for
from .write import too_large_for_one_file


def _tidy_output_dims(model: onnx.ModelProto, declared: set[str]) -> None:
    """Output dimensions the exporter could not name get the size or the declared axis (an
    input's ``sequence``) shape inference finds, or a plain ``<output>_dim_<i>`` name instead of
    the exporter's internal ones."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference is only a nicety here; the checker below is strict
        inferred = model
    found = {o.name: o for o in inferred.graph.output}
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        better = found[output.name].type.tensor_type.shape.dim
        for i, dim in enumerate(dims):
            if not dim.dim_param or dim.dim_param in declared:
                continue
            if i < len(better) and better[i].HasField("dim_value"):
                dim.dim_value = better[i].dim_value
            elif i < len(better) and better[i].dim_param in declared:  # e.g. "sequence"
                dim.dim_param = better[i].dim_param
            else:
                dim.dim_param = f"{output.name}_dim_{i}"


# Ops outside the default domain a file may hold when the export was asked for them:
# ONNX Runtime's 4-bit matmul (export_onnx(..., matmul_nbits=True)).
CONTRIB = {"com.microsoft::MatMulNBits": ("com.microsoft", 1)}


def finalize(model: onnx.ModelProto, opset: int, declared_axes: Set[str] = frozenset(),
             allow_contrib: bool = False) -> None:
    """Make the lowered file final, in place: domains, opset, IR version, producer, checker."""
    used = {f"{n.domain}::{n.op_type}" for n in all_nodes(model.graph)
            if n.domain not in ("", "ai.onnx")}
    contrib = sorted(used & set(CONTRIB)) if allow_contrib else []
    foreign = sorted(used - set(contrib))
    if foreign:
        raise ExportError(
            f"the exported graph uses ops outside the default ONNX domain: {foreign}. fxquant "
            "writes standard ONNX only; this is an fxquant bug if these are fxquant ops."
        )
    del model.opset_import[:]
    model.opset_import.append(onnx.helper.make_opsetid("", opset))
    for domain, version in sorted({CONTRIB[op] for op in contrib}):
        model.opset_import.append(onnx.helper.make_opsetid(domain, version))
    model.ir_version = ir_version_for(opset)
    # Value infos from tracing describe the placeholders' outputs; ONNX Runtime infers its own.
    del model.graph.value_info[:]
    _tidy_output_dims(model, set(declared_axes))
    model.producer_name = "fxquant"
    model.producer_version = __version__
    if not too_large_for_one_file(model):  # over 2 GB the checker reads the file (write.py)
        check(model)


def check(model: onnx.ModelProto) -> None:
    """The full ONNX checker, as an ExportError."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the exported model fails onnx.checker: {exc}") from exc
