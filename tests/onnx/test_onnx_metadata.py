"""Quantization metadata: metadata_props round-trips the config, quantization_annotation names
existing scale and zero-point tensors, and onnx_info reports what the file holds."""

from __future__ import annotations

import onnx
import pytest
import torch

import fxquant
from fxquant.onnx_export import read_annotations, read_metadata

pytestmark = pytest.mark.onnx

KEYS = {
    "fxquant.version", "fxquant.mode", "fxquant.weight_bits", "fxquant.weight_granularity",
    "fxquant.weight_symmetric", "fxquant.activation_scheme", "fxquant.activation_reduce_range",
    "fxquant.matmul_weights", "fxquant.calibration_method", "fxquant.calibration_batches",
    "fxquant.quantized_weights", "fxquant.source_class", "fxquant.capture", "torch.version",
    "fxquant.config",
}


@pytest.mark.parametrize("mode", ["dynamic", "static", "weight_only"])
def test_metadata_round_trips_the_config(exported, mode):
    e = exported("bert", mode)
    meta = read_metadata(onnx.load(e.path))
    assert set(meta) == KEYS
    config = e.qmodel.meta["fxquant"]["config"]
    assert fxquant.QuantConfig.from_dict(meta["fxquant.config"]) == config
    assert meta["fxquant.mode"] == mode
    assert meta["fxquant.version"] == fxquant.__version__
    assert meta["torch.version"] == torch.__version__
    assert meta["fxquant.source_class"] == "BertEncoder"
    assert meta["fxquant.weight_granularity"] == "per_channel"
    assert meta["fxquant.weight_symmetric"] == "true"
    assert meta["fxquant.quantized_weights"] == "14"  # 12 linears + 2 embedding tables
    # fxquant's default pair-safe 8-bit weights cannot saturate ONNX Runtime's kernel: int8.
    assert meta["fxquant.matmul_weights"] == ("none" if mode == "weight_only" else "int8")
    if mode == "static":
        assert meta["fxquant.calibration_method"] == "minmax"
        assert meta["fxquant.calibration_batches"] == "4"
    else:
        assert (meta["fxquant.calibration_method"], meta["fxquant.calibration_batches"]) == (
            "none", "0")


@pytest.mark.parametrize("mode", ["dynamic", "static", "weight_only"])
def test_quantization_annotation_names_existing_tensors(exported, mode):
    model = onnx.load(exported("bert", mode).path)
    annotations = read_annotations(model)
    produced = {o for n in model.graph.node for o in n.output}
    initializers = {t.name for t in model.graph.initializer}
    for tensor, params in annotations.items():
        assert set(params) == {"SCALE_TENSOR", "ZERO_POINT_TENSOR"}
        for name in (tensor, *params.values()):
            assert name in produced | initializers, name
    weights = [t for t in annotations if t.endswith((".w_int8", ".w_uint8"))]
    assert len(weights) == 14
    assert annotations["layers.0.fc.w_int8"] == {
        "SCALE_TENSOR": "layers.0.fc.w_scale", "ZERO_POINT_TENSOR": "layers.0.fc.w_zp"}
    activations = [t for t in annotations if t.endswith("_quantized")]
    assert len(activations) == {"dynamic": 8, "static": 8, "weight_only": 0}[mode]


def test_onnx_info(exported):
    e = exported("bert", "static")
    info = fxquant.onnx_info(e.path)
    assert info["size_bytes"] == e.path.stat().st_size == e.result.size_bytes
    assert info["ir_version"] == 7 and info["opset"] == {"ai.onnx": 14}
    assert info["producer"] == f"fxquant {fxquant.__version__}"
    assert [(v["name"], v["dtype"], v["shape"]) for v in info["inputs"]] == [
        ("input_ids", "int64", ["batch", "sequence"]),
        ("attention_mask", "int64", ["batch", "sequence"])]
    assert [(v["name"], v["dtype"]) for v in info["outputs"]] == [("output", "float32")]
    assert info["outputs"][0]["shape"][0] == "batch"
    n_params = sum(t.numel() for t in e.qmodel.state_dict().values())
    assert 0.9 * n_params <= info["parameters"] <= 1.1 * n_params
    assert info["int8_bytes"] > 2 * info["float_bytes"]
    by_type = info["initializer_bytes"]
    assert by_type["INT8"] + by_type.get("UINT8", 0) == info["int8_bytes"]
    assert info["metadata"]["fxquant.mode"] == "static"
    assert info["quantized_tensors"] == len(read_annotations(onnx.load(e.path)))
