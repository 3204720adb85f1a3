"""External data: the tensors in ``<file>.data`` beside the model (forced here on small models;
automatic above 2 GB), written atomically, and loaded by ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fxquant
from fxquant import ExportError
from fxquant.onnx_export import trace, validate, write

pytestmark = pytest.mark.onnx


@pytest.fixture(scope="module")
def bert(exported):
    e = exported("bert", "dynamic")
    return e.qmodel, e.case.inputs(2, 0), e.path


def _run(path, inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
    return session.run(None, feeds)[0]


def test_forced_external_data_round_trip(bert, tmp_path):
    q, x, single = bert
    result = fxquant.export_onnx(q, tmp_path / "m.onnx", x, external_data=True, validate=True)
    data = tmp_path / "m.onnx.data"
    assert result.external_data == data and result.validation.passed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert result.size_bytes == result.path.stat().st_size + data.stat().st_size
    assert result.path.stat().st_size < data.stat().st_size  # the graph only
    proto = onnx.load(str(result.path), load_external_data=False)
    external = [t for t in proto.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and all(
        {e.key: e.value for e in t.external_data}["location"] == "m.onnx.data" for t in external)
    onnx.checker.check_model(str(result.path), full_check=True)
    np.testing.assert_array_equal(_run(result.path, x), _run(single, x))
    info = fxquant.onnx_info(result.path)
    assert info["int8_bytes"] > 0 and info["metadata"]["fxquant.mode"] == "dynamic"


def test_external_data_is_automatic_above_the_protobuf_limit(bert, tmp_path, monkeypatch):
    q, x, _ = bert
    monkeypatch.setattr(write, "EXTERNAL_DATA_THRESHOLD", 10_000)  # this model's tensors: ~110 KB
    result = fxquant.export_onnx(q, tmp_path / "m.onnx", x)
    assert result.external_data == tmp_path / "m.onnx.data"
    with pytest.raises(ExportError, match="over 2 GB"):
        fxquant.export_onnx(q, tmp_path / "one.onnx", x, external_data=False)
    assert not (tmp_path / "one.onnx").exists()


def test_large_models_are_traced_through_a_file(bert, tmp_path, monkeypatch):
    """Over 2 GB the exporter cannot return one protobuf; the trace goes through a temporary
    file with external data instead (forced here)."""
    q, x, single = bert
    monkeypatch.setattr(trace, "EXTERNAL_DATA_THRESHOLD", 0)
    result = fxquant.export_onnx(q, tmp_path / "m.onnx", x)
    np.testing.assert_array_equal(_run(result.path, x), _run(single, x))


def test_a_failed_export_leaves_neither_file(bert, tmp_path, monkeypatch):
    q, x, _ = bert
    (tmp_path / "m.onnx").write_bytes(b"previous")
    monkeypatch.setitem(validate.BOUNDS, "dynamic", (-1.0, -1.0))
    with pytest.raises(ExportError, match="ONNX Runtime disagrees"):
        fxquant.export_onnx(q, tmp_path / "m.onnx", x, external_data=True, validate=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert (tmp_path / "m.onnx").read_bytes() == b"previous"
