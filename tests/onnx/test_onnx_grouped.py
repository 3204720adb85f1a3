"""ONNX export of group-wise weights (standard opset-14 form and ONNX Runtime's MatMulNBits) and of
per-token dynamic activations: golden node lists, initializer layouts, metadata, and ONNX Runtime
against the PyTorch model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import fxquant
from fxquant import QuantConfig
from fxquant.onnx_export import read_metadata
from tests.models import BertEncoder, EncoderConfig, make_inputs

pytestmark = pytest.mark.onnx

ENC = EncoderConfig(n_layer=1, d_model=64, n_head=4, d_mlp=128, vocab=100, max_pos=32)


def _w4(**kw) -> QuantConfig:
    return QuantConfig(mode="weight_only", weight_bits=4, weight_granularity="per_group",
                       group_size=32, **kw)


def _export(config, tmp_path, name, **kw):
    torch.manual_seed(0)
    model = BertEncoder(ENC, seed=0).eval()
    example = make_inputs("bert", 2, 8, cfg=ENC, seed=0)
    calibration = [make_inputs("bert", 4, 8, cfg=ENC, seed=s) for s in range(3)]
    q = fxquant.quantize(model, example, calibration=calibration, config=config)
    path = tmp_path / f"{name}.onnx"
    result = fxquant.export_onnx(q, path, example, validate=True, **kw)
    return q, onnx.load(path), path, result


def _run(path, inputs):
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})[0]


def _check_parity(q, path):
    for batch, seed in ((1, 5), (3, 6)):
        inputs = make_inputs("bert", batch, 8, cfg=ENC, seed=seed)
        with torch.no_grad():
            want = q(*inputs)
        want = want[0] if isinstance(want, tuple) else want
        got = _run(path, inputs)
        rel = np.linalg.norm(got - want.numpy()) / np.linalg.norm(want.numpy())
        assert rel < 1e-4, rel


def test_standard_form_is_plain_opset_14_with_int8_codes(tmp_path):
    q, model, path, result = _export(_w4(), tmp_path, "standard")
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 14)]
    ops = [n.op_type for n in model.graph.node]
    assert "MatMulNBits" not in ops and ops.count("Reshape") >= 6
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    codes = inits["layers.0.attn.q.w_int8"]  # [K / 32, 32, N], signed, symmetric: zp 0
    assert codes.dtype == np.int8 and codes.shape == (2, 32, 64)
    assert codes.min() >= -7 and codes.max() <= 7
    assert inits["layers.0.attn.q.w_scale"].shape == (2, 1, 64)
    weight_ops = [n.op_type for n in model.graph.node if n.name.startswith("layers.0.attn.q/")]
    assert weight_ops == ["Cast", "Mul", "Reshape", "MatMul", "Add"]  # symmetric: no Sub
    # The int8 codes are the model's (unsigned codes minus the common zero-point 8).
    stored = q.state_dict()["fxq.layers_0_attn_q_w_int4"]
    unpacked = torch.stack((stored & 15, stored >> 4), -1).reshape(64, 64).numpy()
    assert np.array_equal(codes.reshape(64, 64).T, unpacked.astype(np.int16) - 8)
    meta = read_metadata(model)
    assert meta["fxquant.group_size"] == "32"
    assert meta["fxquant.grouped_weights"].startswith("standard")
    assert result.validation.passed
    _check_parity(q, path)


@pytest.mark.parametrize("symmetric", [True, False])
def test_matmul_nbits_on_request(tmp_path, symmetric):
    q, model, path, result = _export(_w4(weight_symmetric=symmetric), tmp_path,
                                     f"nbits{symmetric}", matmul_nbits=True)
    assert ("com.microsoft", 1) in [(o.domain, o.version) for o in model.opset_import]
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 6 and all(n.domain == "com.microsoft" for n in nbits)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nbits[0].attribute}
    assert attrs["bits"] == 4 and attrs["block_size"] == 32
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    packed = inits[nbits[0].input[1]]
    assert packed.dtype == np.uint8 and packed.shape == (attrs["N"], attrs["K"] // 32, 16)
    # The bytes are the model's own packed codes.
    stored = q.state_dict()["fxq.layers_0_attn_q_w_int4"].numpy()
    assert np.array_equal(packed.reshape(stored.shape), stored)
    assert len(nbits[0].input) == (3 if symmetric else 4)  # zero-points only when not all 8
    assert "MatMulNBits" in read_metadata(model)["fxquant.grouped_weights"]
    assert result.validation.passed
    _check_parity(q, path)


def test_group_sizes_matmul_nbits_cannot_take_keep_the_standard_form(tmp_path):
    config = _w4().replace(group_size=8)
    q, model, path, _ = _export(config, tmp_path, "g8", matmul_nbits=True)
    assert "MatMulNBits" not in [n.op_type for n in model.graph.node]
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 14)]
    _check_parity(q, path)


def test_per_token_dynamic_export_matches_the_model(tmp_path):
    config = QuantConfig(mode="dynamic", activation_granularity="per_token")
    _q, model, _path, result = _export(config, tmp_path, "per_token")
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("ReduceMax") >= 1 and ops.count("MatMulInteger") == 6
    assert "per-token" in read_metadata(model)["fxquant.activation_scheme"]
    assert result.validation.passed
