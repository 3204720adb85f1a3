"""The file's structure: opset and IR version, standard domain only, int8 initializers, the op
patterns ONNX Runtime fuses, no float copy of a quantized weight, and the full checker."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from onnxcases import CASES, MODES

import fxquant

pytestmark = pytest.mark.onnx

ALL = [(name, mode) for name in CASES for mode in MODES]


def _ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)


@pytest.mark.parametrize(("name", "mode"), ALL)
def test_opset_ir_domain_and_checker(exported, name, mode):
    model = onnx.load(exported(name, mode).path)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 14)]
    assert model.ir_version == 7
    assert {n.domain for n in model.graph.node} <= {""}
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize(("name", "mode"), ALL)
def test_every_quantized_weight_is_an_8bit_initializer(exported, name, mode):
    e = exported(name, mode)
    model = onnx.load(e.path)
    inits = {t.name: t for t in model.graph.initializer}
    codes = [t for n, t in inits.items() if n.endswith((".w_int8", ".w_uint8"))]
    n_buffers = sum(1 for k in e.qmodel.state_dict() if k.endswith("_w_int8"))
    assert len(codes) == n_buffers > 0
    for t in codes:
        expected = TensorProto.UINT8 if t.name.endswith(".w_uint8") else TensorProto.INT8
        assert t.data_type == expected
        zp = inits[t.name.rsplit(".", 1)[0] + ".w_zp"]
        assert zp.data_type == t.data_type  # ONNX: zero-point type = codes type
    # No float tensor shaped like a quantized weight survives (the int8 copy replaces it).
    shapes = {tuple(t.dims) for t in codes} | {tuple(t.dims)[::-1] for t in codes}
    floats = [t.name for t in model.graph.initializer
              if t.data_type == TensorProto.FLOAT and tuple(t.dims) in shapes and len(t.dims) > 1]
    assert floats == []


def test_int8_codes_are_the_graphmodules_codes(exported):
    """Linear weights are stored [in, out] (MatMul layout): the transpose of fxquant's buffer."""
    e = exported("mlp", "static")
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(e.path).graph.initializer}
    state = e.qmodel.state_dict()
    assert np.array_equal(inits["0.w_int8"], state["fxq.0_w_int8"].numpy().T)
    assert np.allclose(inits["0.w_scale"], state["fxq.0_w_scale"].numpy())
    assert (inits["0.w_zp"] == 0).all()


def test_dynamic_mode_is_onnxruntimes_integer_pattern(exported):
    ops = _ops(onnx.load(exported("bert", "dynamic").path))
    # 12 linears, one DynamicQuantizeLinear per distinct input (q, k, v share theirs).
    assert ops["MatMulInteger"] == 12
    assert ops["DynamicQuantizeLinear"] == 8
    assert ops["QuantizeLinear"] == 0


def test_static_mode_is_qdq(exported):
    model = onnx.load(exported("bert", "static").path)
    ops = _ops(model)
    assert ops["MatMulInteger"] == ops["DynamicQuantizeLinear"] == 0
    assert ops["QuantizeLinear"] == 8  # one per distinct activation
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                 and n.input[0].endswith(".w_int8")]
    assert len(weight_dq) == 12
    assert all(onnx.helper.get_attribute_value(n.attribute[0]) == 1 for n in weight_dq)


def test_weight_only_keeps_activations_float(exported):
    ops = _ops(onnx.load(exported("mlp", "weight_only").path))
    assert ops["QuantizeLinear"] == ops["DynamicQuantizeLinear"] == ops["MatMulInteger"] == 0
    assert ops["DequantizeLinear"] == 2


def test_embeddings_gather_int8_rows_then_dequantize_per_row(exported):
    model = onnx.load(exported("bert", "dynamic").path)
    inits = {t.name: t for t in model.graph.initializer}
    table = inits["word_embeddings.w_int8"]
    assert table.data_type == TensorProto.INT8 and list(table.dims) == [100, 64]
    gathers = [n for n in model.graph.node if n.op_type == "Gather"
               and n.input[0].startswith("word_embeddings.")]
    assert {n.input[0] for n in gathers} == {"word_embeddings.w_int8", "word_embeddings.w_scale",
                                             "word_embeddings.w_zp"}


def test_tied_embedding_and_lm_head_share_one_table(exported):
    model = onnx.load(exported("gpt2", "dynamic").path)
    tables = [t for t in model.graph.initializer if len(t.dims) == 2 and 100 in t.dims]
    assert [t.name for t in tables] == ["wte.w_int8"]  # the [vocab, d] codes, stored once
    transpose = [n for n in model.graph.node if n.op_type == "Transpose"
                 and n.input[0] == "wte.w_int8"]
    assert len(transpose) == 1  # the lm_head reads the same table as [in, out]


@pytest.fixture(scope="module")
def fp32_mlp_bytes(exported, tmp_path_factory) -> int:
    e = exported("mlp", "dynamic")
    path = tmp_path_factory.mktemp("fp32") / "mlp.onnx"
    with pytest.warns(UserWarning, match="not converted by fxquant"):
        result = fxquant.export_onnx(e.float_model, path, e.case.inputs(2, 0))
    return result.size_bytes


@pytest.mark.parametrize("mode", MODES)
def test_file_is_at_least_3_5x_smaller_than_fp32(exported, fp32_mlp_bytes, mode):
    e = exported("mlp", mode)  # 407k weights: int8 dominates the file
    ratio = fp32_mlp_bytes / e.path.stat().st_size
    assert ratio >= 3.5, ratio


def test_dynamic_mode_writes_onnxruntimes_exact_pattern(exported):
    model = onnx.load(exported("mlp", "dynamic").path)
    inits = {t.name: t for t in model.graph.initializer}
    assert inits["0.w_int8"].data_type == inits["0.w_zp"].data_type == TensorProto.INT8
    assert [n.op_type for n in model.graph.node][:6] == [
        "DynamicQuantizeLinear", "Mul", "MatMulInteger", "Cast", "Mul", "Add"]


def test_static_conv_activation_is_one_qdq_pair(exported):
    """A static conv's activation goes through lower_qdq's quantize_activation and
    dequantize_activation: the DequantizeLinear reads the codes with the QuantizeLinear's own
    scale and zero-point tensors, and feeds the Conv."""
    model = onnx.load(exported("convnet", "static").path)
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2
    for conv in convs:
        dq = producer[conv.input[0]]
        assert dq.op_type == "DequantizeLinear"
        q = producer[dq.input[0]]
        assert q.op_type == "QuantizeLinear"
        assert list(dq.input[1:]) == list(q.input[1:])
