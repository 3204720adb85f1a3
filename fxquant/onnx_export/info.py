"""``onnx_info``: what an ONNX file holds, as a plain dict (the CLI prints it as tables)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from ..errors import ExportError
from .metadata import read_annotations, read_metadata

_INTEGER = {"INT8", "UINT8"}
_FLOAT = {"FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE"}


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


def _value(value: onnx.ValueInfoProto) -> dict[str, Any]:
    elem = value.type.tensor_type.elem_type
    return {
        "name": value.name,
        "dtype": helper.tensor_dtype_to_np_dtype(elem).name if elem else "unknown",
        "shape": _dims(value),
    }


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    return count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def onnx_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Inputs and outputs (names, dtypes, shapes), opsets, IR version, parameter count, size on
    disk, initializer bytes by type (int8 vs float), op counts and fxquant's metadata."""
    file = Path(path)
    try:
        model = onnx.load(str(file), load_external_data=False)
    except (OSError, onnx.onnx_cpp2py_export.checker.ValidationError, Exception) as exc:
        raise ExportError(f"cannot read {file} as an ONNX model: {exc}") from exc
    by_type: Counter[str] = Counter()
    parameters = 0
    for tensor in model.graph.initializer:
        name = onnx.TensorProto.DataType.Name(tensor.data_type)
        by_type[name] += _tensor_bytes(tensor)
        parameters += int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    initializer_names = {t.name for t in model.graph.initializer}
    return {
        "path": str(file),
        "size_bytes": file.stat().st_size,
        "ir_version": model.ir_version,
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [_value(v) for v in model.graph.input if v.name not in initializer_names],
        "outputs": [_value(v) for v in model.graph.output],
        "parameters": parameters,
        "initializer_bytes": dict(sorted(by_type.items())),
        "int8_bytes": sum(v for k, v in by_type.items() if k in _INTEGER),
        "float_bytes": sum(v for k, v in by_type.items() if k in _FLOAT),
        "ops": dict(Counter(n.op_type for n in model.graph.node).most_common()),
        "quantized_tensors": len(read_annotations(model)),
        "metadata": read_metadata(model),
    }
