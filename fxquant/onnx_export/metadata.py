"""Quantization metadata in the file: model-level ``metadata_props`` and
``GraphProto.quantization_annotation``. docs/onnx.md documents every key.

All keys start with ``fxquant.`` except ``torch.version``; values are strings (ONNX requires it),
and ``fxquant.config`` holds the full :meth:`QuantConfig.to_dict` as JSON, so
``QuantConfig.from_dict(json.loads(...))`` rebuilds the config (leaf module classes excepted).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

import onnx
import torch

from .._version import __version__
from ..config import QuantConfig

_ACTIVATIONS = {
    "dynamic": "dynamic per-tensor uint8 (DynamicQuantizeLinear, 0..255)",
    "static": "static per-tensor uint8 (QuantizeLinear, calibrated scale and zero-point)",
    "weight_only": "float32 (not quantized)",
    "float": "float32 (not quantized)",
}


def _calibration(config: QuantConfig | None, record: Mapping[str, Any]) -> tuple[str, str]:
    if config is None or config.mode != "static":
        return "none", "0"
    method: str = config.activation_observer
    if method == "percentile":
        method = f"percentile({config.percentile})"
    elif method == "moving_average":
        method = f"moving_average(momentum={config.moving_average_momentum})"
    return method, str(record.get("calibration_batches", 0))


def build_metadata(
    config: QuantConfig | None,
    record: Mapping[str, Any],
    source_class: str,
    codes_types: frozenset[str],
    quantized_weights: int,
) -> dict[str, str]:
    """The ``metadata_props`` of an export (``config`` None: a float model)."""
    mode = config.mode if config is not None else "float"
    method, batches = _calibration(config, record)
    props = {
        "fxquant.version": __version__,
        "fxquant.mode": mode,
        "fxquant.weight_bits": str(config.weight_bits) if config else "32",
        "fxquant.weight_granularity": config.weight_granularity if config else "none",
        "fxquant.weight_symmetric": str(config.weight_symmetric).lower() if config else "none",
        "fxquant.activation_scheme": _ACTIVATIONS[mode],
        "fxquant.activation_reduce_range": str(config.reduce_range).lower() if config else "none",
        "fxquant.matmul_weights": "+".join(sorted(codes_types)) or "none",
        "fxquant.calibration_method": method,
        "fxquant.calibration_batches": batches,
        "fxquant.quantized_weights": str(quantized_weights),
        "fxquant.source_class": source_class,
        "fxquant.capture": str(record.get("capture", "none")),
        "torch.version": torch.__version__,
        "fxquant.config": json.dumps(config.to_dict(), sort_keys=True) if config else "{}",
    }
    return props


def accuracy_metadata(config: QuantConfig | None, forms: Mapping[str, int]) -> dict[str, str]:
    """Keys for the outlier-aware and low-bit options, only where the file uses them: per-token
    activations, SmoothQuant, GPTQ / AWQ, and group-wise weights (the group size and how many
    layers took each form: ``standard`` opset-14 dequantization or ``MatMulNBits``)."""
    props: dict[str, str] = {}
    if config is None:
        return props
    if config.per_token_activations:
        props["fxquant.activation_scheme"] = (
            "dynamic per-token: rows divided by their abs-max, then DynamicQuantizeLinear "
            "(uint8, 0..255)")
    if config.smoothquant_alpha is not None:
        props["fxquant.smoothquant_alpha"] = str(config.smoothquant_alpha)
    if config.weight_method != "rtn":
        props["fxquant.weight_method"] = config.weight_method
    if forms:
        described = {"standard": "standard (int8 codes; Cast/Sub/Mul/Reshape + MatMul)",
                     "MatMulNBits": "com.microsoft MatMulNBits (packed 4-bit codes)"}
        props["fxquant.group_size"] = str(config.group_size)
        props["fxquant.grouped_weights"] = "; ".join(f"{described.get(k, k)}: {v}"
                                                     for k, v in sorted(forms.items()))
    return props


def write_metadata(
    model: onnx.ModelProto, props: Mapping[str, str], annotations: Mapping[str, tuple[str, str]]
) -> None:
    """Replace the file's ``metadata_props`` and quantization annotations with these."""
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, dict(props))
    del model.graph.quantization_annotation[:]
    for tensor, (scale, zero_point) in annotations.items():
        entry = model.graph.quantization_annotation.add()
        entry.tensor_name = tensor
        for key, value in (("SCALE_TENSOR", scale), ("ZERO_POINT_TENSOR", zero_point)):
            pair = entry.quant_parameter_tensor_names.add()
            pair.key, pair.value = key, value


def read_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    """``metadata_props`` as a dict; ``fxquant.config`` decoded from JSON."""
    props: dict[str, Any] = {p.key: p.value for p in model.metadata_props}
    if "fxquant.config" in props:
        with contextlib.suppress(ValueError):
            props["fxquant.config"] = json.loads(props["fxquant.config"])
    return props


def read_annotations(model: onnx.ModelProto) -> dict[str, dict[str, str]]:
    """``quantization_annotation`` as {tensor: {"SCALE_TENSOR": ..., "ZERO_POINT_TENSOR": ...}}."""
    return {
        a.tensor_name: {p.key: p.value for p in a.quant_parameter_tensor_names}
        for a in model.graph.quantization_annotation
    }
