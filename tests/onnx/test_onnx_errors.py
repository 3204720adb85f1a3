"""Bad export requests fail early with fxquant's errors, and a failed export leaves no file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxquant
from fxquant import ConfigError, ExampleInputError, ExportError, FxQuantError
from fxquant.onnx_export import OpsetError
from fxquant.onnx_export import validate as validate_module

pytestmark = pytest.mark.onnx


@pytest.fixture(scope="module")
def mlp(exported):
    e = exported("mlp", "static")
    return e.qmodel, e.case.inputs(2, 0)


@pytest.mark.parametrize("opset", [10, 12])
def test_per_channel_below_opset_13_names_the_opset_needed(mlp, tmp_path, opset):
    q, x = mlp
    with pytest.raises(OpsetError, match=r"per-channel.*from opset 13"):
        fxquant.export_onnx(q, tmp_path / "m.onnx", x, opset=opset)
    assert issubclass(OpsetError, FxQuantError)
    assert not (tmp_path / "m.onnx").exists()


def test_opset_above_the_exporters_range(mlp, tmp_path):
    q, x = mlp
    with pytest.raises(OpsetError, match="up to 20"):
        fxquant.export_onnx(q, tmp_path / "m.onnx", x, opset=21)


def test_model_op_missing_at_the_opset(exported, tmp_path):
    e = exported("bert", "dynamic")  # scaled_dot_product_attention exports from opset 14
    with pytest.raises(OpsetError, match="version 14"):
        fxquant.export_onnx(e.qmodel, tmp_path / "m.onnx", e.case.inputs(2, 0), opset=13)
    assert list(tmp_path.iterdir()) == []


def test_per_tensor_weights_export_at_opset_12(tmp_path):
    x = torch.randn(4, 16)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    q = fxquant.quantize(model, (x,), calibration=[(x,)],
                         config=fxquant.QuantConfig(mode="static",
                                                    weight_granularity="per_tensor"))
    result = fxquant.export_onnx(q, tmp_path / "m.onnx", (x,), opset=12, validate=True)
    assert result.opset == 12 and result.validation.passed


@pytest.mark.parametrize("inputs", [(torch.randn(2, 5),), (torch.randn(2, 784), torch.randn(2)),
                                    ("not a tensor",), ()])
def test_example_inputs_that_do_not_fit(mlp, tmp_path, inputs):
    q, _ = mlp
    with pytest.raises(ExampleInputError):
        fxquant.export_onnx(q, tmp_path / "m.onnx", inputs)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_paths(mlp, tmp_path):
    q, x = mlp
    with pytest.raises(ExportError, match="does not exist"):
        fxquant.export_onnx(q, tmp_path / "missing" / "m.onnx", x)
    with pytest.raises(ExportError, match="is a directory"):
        fxquant.export_onnx(q, tmp_path, x)
    (tmp_path / "file").write_text("")
    with pytest.raises(ExportError):
        fxquant.export_onnx(q, tmp_path / "file" / "m.onnx", x)


def test_failed_validation_leaves_no_file(mlp, tmp_path, monkeypatch):
    q, x = mlp
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous file")
    monkeypatch.setitem(validate_module.BOUNDS, "static", (-1.0, -1.0))
    with pytest.raises(ExportError, match="ONNX Runtime disagrees"):
        fxquant.export_onnx(q, target, x, validate=True)
    assert target.read_bytes() == b"previous file"  # untouched, and no temporary file left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_float_model_exports_as_fp32_with_a_warning(tmp_path):
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(3, 16)
    with pytest.warns(UserWarning, match=r"not converted by fxquant.*float32"):
        result = fxquant.export_onnx(model, tmp_path / "f.onnx", (x,), validate=True)
    info = fxquant.onnx_info(result.path)
    assert result.mode == "float" and info["metadata"]["fxquant.mode"] == "float"
    assert info["int8_bytes"] == 0


def test_prepared_model_is_refused(tmp_path):
    x = torch.randn(3, 16)
    observed = fxquant.prepare(nn.Sequential(nn.Linear(16, 8)), (x,),
                               fxquant.QuantConfig(mode="static"))
    with pytest.raises(FxQuantError, match=r"fxquant\.convert"):
        fxquant.export_onnx(observed, tmp_path / "m.onnx", (x,))


def test_unknown_matmul_weights(mlp, tmp_path):
    q, x = mlp
    with pytest.raises(ConfigError, match="matmul_weights"):
        fxquant.export_onnx(q, tmp_path / "m.onnx", x, matmul_weights="int4")
