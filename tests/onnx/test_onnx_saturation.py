"""8-bit weights: the file stores them as uint8 for integer layers (exact on every CPU), unless
asked for ONNX Runtime's int8 pattern, which saturates on AVX2 CPUs without VNNI."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto

import fxquant
from fxquant import ExportError
from fxquant.onnx_export.validate import _saturating_cpu

pytestmark = pytest.mark.onnx


@pytest.fixture(scope="module")
def eight_bit(exported):
    e = exported("mlp", "dynamic")
    x = e.case.inputs(8, 3)
    with pytest.warns(UserWarning, match="saturate"):
        config = fxquant.QuantConfig(weight_bits=8, pair_safe_weights=False)
        q = fxquant.quantize(e.float_model, x, config=config)
    return q, x


def test_wide_weight_codes_become_uint8_and_stay_exact(eight_bit, tmp_path):
    q, x = eight_bit
    result = fxquant.export_onnx(q, tmp_path / "m.onnx", x, validate=True)
    inits = {t.name: t for t in onnx.load(result.path).graph.initializer}
    assert inits["0.w_uint8"].data_type == inits["0.w_zp"].data_type == TensorProto.UINT8
    assert result.validation.outputs[0].max < 1e-5  # the same integer arithmetic, no flips


def test_int8_pattern_is_caught_saturating_on_avx2_and_exact_with_vnni(eight_bit, tmp_path):
    q, x = eight_bit
    path = tmp_path / "m.onnx"
    if _saturating_cpu():  # AVX2 without VNNI: ONNX Runtime's int16 pair sums overflow
        with pytest.raises(ExportError, match="AVX2 but no VNNI"):
            fxquant.export_onnx(q, path, x, validate=True, matmul_weights="int8")
        assert not path.exists()
    else:  # VNNI accumulates in int32: the same int8 file is exact
        result = fxquant.export_onnx(q, path, x, validate=True, matmul_weights="int8")
        inits = {t.name: t for t in onnx.load(result.path).graph.initializer}
        assert inits["0.w_int8"].data_type == TensorProto.INT8
        assert result.validation.outputs[0].max < 1e-5


def test_uint8_weights_on_request(exported, tmp_path):
    e = exported("bert", "static")
    result = fxquant.export_onnx(e.qmodel, tmp_path / "m.onnx", e.case.inputs(2, 0),
                                 matmul_weights="uint8", validate=True)
    model = onnx.load(result.path)
    inits = {t.name: t for t in model.graph.initializer}
    assert inits["layers.0.fc.w_uint8"].data_type == TensorProto.UINT8
    assert inits["word_embeddings.w_int8"].data_type == TensorProto.INT8  # only dequantized
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["fxquant.matmul_weights"] == "uint8"


def test_default_pair_safe_weights_are_int8_and_exact(exported, tmp_path):
    # fxquant's default 8-bit weights have pair-safe scales: no vpmaddubsw pair can overflow, so
    # the file keeps ONNX Runtime's own int8 pattern and ONNX Runtime computes it exactly.
    e = exported("mlp", "dynamic")
    x = e.case.inputs(8, 3)
    q = fxquant.quantize(e.float_model, x)
    result = fxquant.export_onnx(q, tmp_path / "m.onnx", x, validate=True)
    inits = {t.name: t for t in onnx.load(result.path).graph.initializer}
    assert inits["0.w_int8"].data_type == TensorProto.INT8
    assert int(abs(fxquant.numerics.pair_sums(q.state_dict()["fxq.0_w_int8"]).max())) <= 128
    assert result.validation.outputs[0].max < 1e-5
