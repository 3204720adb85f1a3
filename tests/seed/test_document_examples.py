"""Every Python example of the seed document (tests/seed/quantization_guide.md, a copy of
shared/seed/quantization_guide.md) runs as written, with ``qat_llm`` replaced by ``fxquant`` and
the data loaders and models it takes for granted supplied here; then its results are checked.

The document's one shell example, ``python demo_quantization.py``, is ``python -m fxquant.demo``
(tests/seed/test_demo.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest
import torch
from seed_helpers import int8_keys, labelled_loader, seed_mlp
from torch import nn

from fxquant import ops
from fxquant.fake_quant import apply_fake_quant_to_model
from fxquant.ptq import PTQPipeline
from fxquant.real_quant import RealQuantizeLinear, convert_to_real_quant

GUIDE = Path(__file__).with_name("quantization_guide.md")
BLOCKS = [
    b.replace("qat_llm", "fxquant")
    for b in re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
]
REAL_QUANT, PTQ, EXPORT, COMPARISON, WORKFLOW, IMPORTS = range(6)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def run_block(index: int, **names) -> dict:
    namespace = {"__name__": f"guide_block_{index}", **names}
    exec(compile(BLOCKS[index], f"{GUIDE.name}[block {index}]", "exec"), namespace)
    return namespace


def test_the_document_has_six_python_examples():
    assert len(BLOCKS) == 6
    assert "convert_to_real_quant(model, bits=8)" in BLOCKS[REAL_QUANT]
    assert "PTQPipeline(real_quant_model, bits=8)" in BLOCKS[WORKFLOW]


def test_real_quantization_example():
    # The block uses nn without importing it.
    ns = run_block(REAL_QUANT, nn=nn, torch=torch)
    model, qmodel = ns["model"], ns["quantized_model"]
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear]  # untouched
    layers = [m for m in qmodel.modules() if isinstance(m, RealQuantizeLinear)]
    assert len(layers) == 2 and all(m.is_quantized for m in layers)
    assert int8_keys(qmodel) == ["0.w_int8", "2.w_int8"]
    x = torch.randn(16, 10)
    with torch.no_grad():
        ref, out = model(x), qmodel(x)
    # Weights within half a step, activations within one 7-bit step: a few percent at most.
    assert (out - ref).abs().max() < 0.03 * ref.abs().max()


def test_ptq_example(calibration_loader, capsys):
    trained_model = seed_mlp()
    before = {k: v.clone() for k, v in trained_model.state_dict().items()}
    ns = run_block(PTQ, trained_model=trained_model, calibration_loader=calibration_loader)
    printed = capsys.readouterr().out
    ratio = float(re.search(r"Compression: ([\d.]+)x", printed).group(1))
    assert ratio >= 3.9
    assert ns["pipeline"].calibration_batches == 8  # num_batches=10, the loader holds 8
    qmodel = ns["quantized_model"]
    assert int8_keys(qmodel) == ["fxq.0_w_int8", "fxq.2_w_int8"]
    assert ops.linear_static in [n.target for n in qmodel.graph.nodes]
    assert all(torch.equal(before[k], v) for k, v in trained_model.state_dict().items())


@pytest.mark.onnx
@pytest.mark.parametrize("kind", ["real_quant", "ptq"])
def test_onnx_export_example(kind, calibration_loader, tmp_path, monkeypatch, capsys):
    mlp = seed_mlp()
    if kind == "real_quant":
        quantized_model = convert_to_real_quant(mlp)
    else:
        quantized_model = PTQPipeline(mlp).calibrate(calibration_loader).convert_to_real_quant()
    monkeypatch.chdir(tmp_path)
    ns = run_block(EXPORT, quantized_model=quantized_model)
    path = tmp_path / "models" / "my_model.onnx"
    proto = onnx.load(str(path))
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 14)]
    info = ns["info"]
    assert info["inputs"][0]["shape"] == ["batch", 784]
    assert info["outputs"][0]["shape"] == ["batch", 10]
    assert info["parameters"] >= 784 * 512 + 512 * 10
    assert info["metadata"]["model_name"] == "my_model"
    printed = capsys.readouterr().out
    assert "Parameters: " in printed and "Inputs: " in printed and "Outputs: " in printed
    x, _ = next(iter(calibration_loader))
    assert ns["exporter"].validate_export(path, inputs=x)["passed"]


def test_comparison_example(test_loader, tmp_path, monkeypatch, capsys):
    original_model = seed_mlp()
    fake_quant_model = apply_fake_quant_to_model(original_model)
    real_quant_model = convert_to_real_quant(original_model)
    monkeypatch.chdir(tmp_path)
    ns = run_block(
        COMPARISON,
        original_model=original_model,
        fake_quant_model=fake_quant_model,
        real_quant_model=real_quant_model,
        test_loader=test_loader,
    )
    rows = ns["results"]["models"]
    for key in ("original", "fake_quant", "real_quant"):
        assert {
            "size_mb",
            "latency_ms",
            "throughput_samples_per_s",
            "peak_memory_mb",
            "accuracy",
            "mse_vs_original",
        } <= set(rows[key])
    assert rows["original"]["size_mb"] / rows["real_quant"]["size_mb"] >= 3.9
    assert rows["real_quant"]["mse_vs_original"] < 1e-3
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["models"].keys() == rows.keys()
    assert "Real Int8" in capsys.readouterr().out


@pytest.mark.onnx
def test_complete_workflow_example(calibration_loader, test_loader, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    ns = run_block(WORKFLOW, calibration_loader=calibration_loader, test_loader=test_loader)
    model, real_quant_model = ns["model"], ns["real_quant_model"]
    # The original is untouched by every step: still float nn.Linear layers.
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear]
    assert not any(v.dtype == torch.int8 for v in model.state_dict().values())
    assert next(type(m) for m in ns["fake_quant_model"]).__name__ == "FakeQuantizeLinear"
    assert int8_keys(real_quant_model) == ["0.w_int8", "2.w_int8"]
    # PTQ calibrated on all 8 batches (the default num_batches=10 is more than the loader has).
    assert ns["pipeline"].calibration_batches == 8
    proto = onnx.load(str(tmp_path / "model.onnx"))
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 14)]
    rows = ns["results"]["models"]
    assert rows["original"]["size_bytes"] == 1628200
    assert rows["original"]["size_bytes"] / rows["real_quant"]["size_bytes"] >= 3.9
    x, _ = next(iter(test_loader))
    with torch.no_grad():
        ref, out = model(x), real_quant_model(x)
    assert (out - ref).abs().max() < 0.03 * ref.abs().max()
    assert "Original (FP32)" in capsys.readouterr().out


def test_integration_imports():
    ns = run_block(IMPORTS)
    for name in (
        "FakeQuantizeLinear",
        "RealQuantizeLinear",
        "symmetric_quantize",
        "PTQPipeline",
        "ONNXExporter",
        "QuantizationComparison",
    ):
        assert callable(ns[name])


def test_labelled_loader_is_what_the_examples_expect():
    # (inputs, labels) batches of the document's 784 features.
    x, y = next(iter(labelled_loader(seed_mlp())))
    assert x.shape == (32, 784) and y.dtype == torch.long
