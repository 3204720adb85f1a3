"""python -m fxquant.demo: the document's demo on real data (shortened: 1 epoch each)."""

from __future__ import annotations

import json

import onnx
import pytest

from fxquant import demo

pytestmark = [pytest.mark.onnx, pytest.mark.filterwarnings("ignore::UserWarning")]


def test_demo_writes_the_model_and_the_report(tmp_path, capsys):
    out = tmp_path / "models"
    assert (
        demo.main(["--out", str(out), "--epochs", "1", "--qat-epochs", "1", "--timing-rounds", "1"])
        == 0
    )
    printed = capsys.readouterr().out
    for text in (
        "Original (FP32)",
        "Fake Quant",
        "Real Int8",
        "PTQ Int8 (static)",
        "ONNX Runtime check passed",
        "3.94x smaller",
    ):
        assert text in printed
    proto = onnx.load(str(out / "qat_demo_model.onnx"))
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 14)]
    report = json.loads((out / "comparison_report.json").read_text())
    rows = report["models"]
    assert list(rows) == ["original", "fake_quant", "real_quant", "ptq_int8_static"]
    for row in rows.values():
        assert row["accuracy"] > 0.8  # digits after one epoch
        assert row["latency_ms"] > 0 and row["size_mb"] > 0
    assert report["summary"]["real_quant"]["compression"] >= 3.9
    assert rows["real_quant"]["mse_vs_fake_quant"] < 1e-4


def test_data_is_the_digits_upsampled_to_the_document_shape():
    train, test = demo.load_digits_data()
    assert len(train) + len(test) == 1797
    x, y = train[0]
    assert x.shape == (784,) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert 0 <= int(y) <= 9
