"""``fxquant inspect model.onnx`` prints onnx_info as tables (or JSON)."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import pytest

from fxquant.cli import main

pytestmark = pytest.mark.onnx


def test_inspect_prints_tables(exported, capsys):
    path = exported("bert", "dynamic").path
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    for text in ("IR version", "ai.onnx 14", "input_ids", "[batch, sequence]", "int8 initializers",
                 "fxquant.mode", "dynamic", "BertEncoder", "QuantConfig", "weight_granularity",
                 "MatMulInteger", "DynamicQuantizeLinear"):
        assert text in out, text


def test_inspect_json_is_onnx_info(exported, capsys):
    path = exported("mlp", "static").path
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["opset"] == {"ai.onnx": 14} and info["metadata"]["fxquant.mode"] == "static"


def test_inspect_missing_file_fails_cleanly(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "none.onnx")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_console_script_entry_point():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "fxquant"]
    assert script.load() is main
