"""fxquant.export: ONNXExporter over fxquant.export_onnx / fxquant.onnx_info."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import fxquant
from fxquant.errors import ConfigError
from fxquant.export import ONNXExporter
from fxquant.fake_quant import apply_fake_quant_to_model
from fxquant.ptq import PTQPipeline
from fxquant.real_quant import RealQuantizeLinear, convert_to_real_quant, quant_config_of

pytestmark = [pytest.mark.onnx, pytest.mark.filterwarnings("ignore::UserWarning")]


def _int8_initializers(path) -> int:
    """8-bit weight matrices in the file (zero-points are 8-bit too, but not 2-D)."""
    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    return sum(
        t.data_type in eight_bit and len(t.dims) == 2
        for t in onnx.load(str(path)).graph.initializer
    )


def test_real_quant_model_exports_at_opset_14_with_its_own_codes(mlp, tmp_path):
    real = convert_to_real_quant(mlp)
    snapshot = {k: v.clone() for k, v in real.state_dict().items()}
    exporter = ONNXExporter(real, model_name="seed_mlp")
    path = tmp_path / "models" / "seed_mlp.onnx"  # the folder does not exist yet
    result = exporter.export(
        path, input_shape=(1, 784), optimize_model=True, add_quantization_info=True, validate=True
    )
    assert result.validation.passed and result.mode == "dynamic"
    proto = onnx.load(str(path))
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 14)]
    assert _int8_initializers(path) == 2
    # The exported GraphModule holds exactly the codes of the RealQuantizeLinear layers.
    gm_codes = exporter.exported_model.state_dict()["fxq.0_w_int8"]
    assert torch.equal(gm_codes, real[0].w_int8)
    assert all(torch.equal(snapshot[k], v) for k, v in real.state_dict().items())


def test_info_has_the_document_keys(mlp, tmp_path):
    exporter = ONNXExporter(convert_to_real_quant(mlp), model_name="my_model")
    path = tmp_path / "my_model.onnx"
    exporter.export(path, input_shape=(1, 784))
    info = exporter.get_onnx_model_info(path)
    # int8 weights + per-channel scale, zero-point and bias
    assert info["parameters"] == 784 * 512 + 512 * 10 + 3 * (512 + 10)
    assert info["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 784]}]
    assert info["outputs"] == [{"name": "output", "dtype": "float32", "shape": ["batch", 10]}]
    assert info["opset"] == 14 and info["model_name"] == "my_model"
    assert info["metadata"]["fxquant.mode"] == "dynamic"
    assert info["metadata"]["fxquant.weight_bits"] == "8"
    assert info["file_size_bytes"] < 0.27 * 1628200  # int8: about a quarter of fp32


def test_validate_export_at_two_batch_sizes(mlp, test_loader, tmp_path):
    exporter = ONNXExporter(convert_to_real_quant(mlp))
    path = tmp_path / "m.onnx"
    exporter.export(path, input_shape=(1, 784))
    x, _ = next(iter(test_loader))
    report = exporter.validate_export(path, inputs=x)
    assert report["passed"] and report["batch_sizes"] == [16, 32]
    assert report["output_shape"] == (32, 10)
    # The file does the integer arithmetic it encodes: float summation order aside, exact.
    assert report["max_abs_diff"] <= 1e-3 * report["max_abs_output"]
    assert report["checks"] and all(c["max_abs_diff"] >= 0 for c in report["checks"])
    # Against the PyTorch model as it runs (7-bit activation codes): about one 7-bit step.
    assert report["max_abs_diff_vs_model"] < 0.05 * report["max_abs_output"]
    assert exporter.validate_export(path, input_shape=(4, 784))["passed"]


def test_static_ptq_model_and_metadata_switch(mlp, calibration_loader, tmp_path):
    qmodel = PTQPipeline(mlp).calibrate(calibration_loader, 2).convert_to_real_quant()
    exporter = ONNXExporter(qmodel, model_name="ptq")
    x, _ = next(iter(calibration_loader))
    with_info = tmp_path / "with.onnx"
    exporter.export(with_info, example_inputs=x[:1], validate=True)
    assert exporter.validate_export(with_info, inputs=x)["passed"]
    props = {p.key for p in onnx.load(str(with_info)).metadata_props}
    assert {"model_name", "fxquant.mode", "fxquant.config"} <= props
    bare = tmp_path / "bare.onnx"
    exporter.export(bare, example_inputs=x[:1], add_quantization_info=False)
    proto = onnx.load(str(bare))
    assert {p.key for p in proto.metadata_props} == {"model_name"}
    assert not proto.graph.quantization_annotation
    ort.InferenceSession(str(bare), providers=["CPUExecutionProvider"])


def test_fake_quant_model_is_exported_as_the_int8_model_it_simulates(mlp, tmp_path):
    fq = apply_fake_quant_to_model(mlp)
    exporter = ONNXExporter(fq)
    exporter.export(tmp_path / "fq.onnx", input_shape=(2, 784))
    assert _int8_initializers(tmp_path / "fq.onnx") == 2
    assert exporter.validate_export(tmp_path / "fq.onnx", input_shape=(8, 784))["passed"]


def test_float_layers_stay_float():
    model = nn.Sequential(
        RealQuantizeLinear(8, 8), nn.ReLU(), RealQuantizeLinear(8, 4).quantize_weights()
    )
    config = quant_config_of(model)
    assert config.skip == ("0",) and config.mode == "dynamic"
    mixed = nn.Sequential(
        convert_to_real_quant(nn.Linear(8, 8)), convert_to_real_quant(nn.Linear(8, 8), bits=4)
    )
    with pytest.raises(ConfigError, match="schemes"):
        quant_config_of(mixed)


def test_a_float_model_exports_as_float(tmp_path):
    model = nn.Sequential(nn.Linear(8, 4))
    exporter = ONNXExporter(model)
    with pytest.warns(UserWarning, match="float32"):
        exporter.export(tmp_path / "f.onnx", input_shape=(1, 8))
    assert exporter.get_onnx_model_info(tmp_path / "f.onnx")["metadata"]["fxquant.mode"] == "float"
    assert exporter.validate_export(tmp_path / "f.onnx")["passed"]


def test_fxquant_api_is_what_runs(mlp, tmp_path):
    # The exporter is a thin layer: the file equals fxquant.export_onnx's, metadata aside.
    real = convert_to_real_quant(mlp)
    x = torch.rand(1, 784)
    exporter = ONNXExporter(real)
    exporter.export(tmp_path / "a.onnx", example_inputs=x)
    fxquant.export_onnx(exporter.exported_model, tmp_path / "b.onnx", x)
    a, b = onnx.load(str(tmp_path / "a.onnx")), onnx.load(str(tmp_path / "b.onnx"))
    assert a.graph == b.graph


def test_the_file_is_written_once_and_not_read_back(mlp, tmp_path, monkeypatch):
    # export_onnx writes model_name itself: nothing loads, edits or re-saves the file after it,
    # and validate_export takes the names and mode from the export's result.
    exporter = ONNXExporter(convert_to_real_quant(mlp), model_name="once")

    def refuse(*args, **kwargs):
        raise AssertionError("the exported file was loaded or saved again")

    monkeypatch.setattr(onnx, "save", refuse)
    monkeypatch.setattr(onnx, "save_model", refuse)
    path = tmp_path / "once.onnx"
    exporter.export(path, input_shape=(1, 784))
    monkeypatch.setattr(onnx, "load", refuse)
    report = exporter.validate_export(path, input_shape=(4, 784))
    assert report["passed"] and report["mode"] == "dynamic" and report["batch_sizes"] == [2, 4]
    monkeypatch.undo()
    assert fxquant.onnx_info(path)["metadata"]["model_name"] == "once"


def test_stage_of_reads_graph_modules_and_region_models(mlp):
    from fxquant.record import stage_of

    x = torch.randn(2, 784)
    observed = fxquant.prepare(mlp, (x,))
    assert stage_of(observed) == "prepared"
    assert stage_of(fxquant.convert(observed)) == "converted"
    assert stage_of(mlp) is None
