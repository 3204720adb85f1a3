"""fxquant.error_report: per-layer errors against a hand computation, sorting by contribution,
ONNX Runtime layers matched in the exported file, JSON / table / plot."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import fxquant
from fxquant import QuantConfig, numerics
from fxquant.report import error_report

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def one_layer() -> nn.Sequential:
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -1.0, 0.25, 2.0],
                                         [1.5, 0.3, -0.7, 0.1],
                                         [-0.2, 0.9, 1.1, -1.3]]))
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return nn.Sequential(layer).eval()


def test_one_layer_values_match_a_hand_computation():
    model = one_layer()
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.2, 0.4, -1.5, 0.0]])
    config = QuantConfig(weight_bits=4)
    q = fxquant.quantize(model, (x,), config=config)
    report = error_report(model, q, [(x,)])
    (layer,) = report.layers
    assert layer.name == "0" and layer.kind == "linear" and layer.calls == 1

    # By hand: the fp32 output, and the 4-bit weight / 8-bit dynamic input the int8 model uses.
    w, b = model[0].weight.detach(), model[0].bias.detach()
    ref = x @ w.T + b
    rows = w.abs().amax(dim=1, keepdim=True) / 7  # symmetric 4-bit: codes -7..7
    w_q = torch.clamp(torch.round(w / rows), -7, 7) * rows
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    s_x = (hi - lo) / 255
    z_x = round(-lo / s_x)
    x_q = (torch.clamp(torch.round(x / s_x) + z_x, 0, 255) - z_x) * s_x
    fake = x_q @ w_q.T + b
    step = (ref.max() - ref.min()).item() / 255

    assert layer.step == pytest.approx(step)
    rel = ((fake - ref).norm() / ref.norm()).item()
    assert layer.fake_quant.relative == pytest.approx(rel, rel=1e-4)
    assert layer.fake_quant.max_steps == pytest.approx((fake - ref).abs().max().item() / step,
                                                       rel=1e-4)
    rms = math.sqrt((fake - ref).pow(2).mean().item())
    assert layer.fake_quant.rms_steps == pytest.approx(rms / step, rel=1e-4)
    assert layer.int8.relative == pytest.approx(rel, rel=1e-3)
    assert layer.int8_vs_fake_steps < 0.01  # int8 computes the simulation
    assert layer.share == 1.0
    assert report.model_output == pytest.approx(layer.int8.relative, rel=1e-6)
    # One layer: the model's error with this layer alone int8 is the layer's own error.
    assert layer.model_error == pytest.approx(layer.int8.relative, rel=1e-6)
    # The 8-bit activation step the hand computation used is fxquant's too.
    assert numerics.activation_qparams(lo, hi, False) == pytest.approx((s_x, z_x))


class TwoPaths(nn.Module):
    """``bad`` has one huge weight per row on an input channel that is always zero: its 4-bit
    grid is too coarse for every weight that matters."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.good = nn.Linear(16, 16)
        self.bad = nn.Linear(16, 16)
        with torch.no_grad():
            self.bad.weight[:, 0] = 25.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.good(x) + self.bad(x)


def _inputs(n: int = 8) -> torch.Tensor:
    x = torch.randn(n, 16)
    x[:, 0] = 0.0
    return x


def test_layers_are_sorted_by_contribution_and_measured_in_isolation():
    model = TwoPaths().eval()
    batches = [(_inputs(),) for _ in range(3)]
    q = fxquant.quantize(model, batches[0], config=QuantConfig(weight_bits=4))
    report = error_report(model, q, batches)
    assert [x.name for x in report.layers] == ["bad", "good"]
    assert report.layers[0].share > 0.9
    assert report.batches == 3 and all(x.calls == 3 for x in report.layers)
    assert sum(x.share for x in report.layers) == pytest.approx(1.0)
    assert report.sensitivities()["bad"] > 10 * report.sensitivities()["good"]
    bad, good = report.layers
    assert bad.model_error > 10 * good.model_error


def test_json_table_and_plot(tmp_path):
    model = TwoPaths().eval()
    x = _inputs(4)
    q = fxquant.quantize(model, (x,))
    report = error_report(model, q, [(x,)])
    data = json.loads(report.to_json(tmp_path / "r.json").read_text())
    assert [layer["name"] for layer in data["layers"]] == [x.name for x in report.layers]
    assert set(data["layers"][0]["int8"]) == {"relative", "max_steps", "rms_steps"}
    text = report.table()
    assert "bad" in text and "whole model" in text
    plot = report.plot(tmp_path / "r.svg")
    assert plot.exists() and plot.stat().st_size > 0


def test_the_float_model_is_given_back_as_it_was():
    model = TwoPaths().train()
    x = torch.randn(4, 16)
    q = fxquant.quantize(model, (x,))
    error_report(model, q, [(x,)])
    assert model.training and not model.good._forward_hooks


@pytest.mark.onnx
@pytest.mark.parametrize("mode", ["dynamic", "static", "weight_only"])
def test_onnx_runtime_layers_are_cut_out_of_the_file(mode, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    batches = [(torch.randn(8, 16),) for _ in range(2)]
    q = fxquant.quantize(model, batches[0], config=QuantConfig(mode=mode, weight_bits=4),
                         calibration=batches)
    path = tmp_path / "m.onnx"
    fxquant.export_onnx(q, path, batches[0])
    report = error_report(model, q, batches, onnx_path=path)
    assert not report.missing
    for layer in report.layers:
        assert layer.onnx is not None
        # ONNX Runtime runs the same int8 layer: the same error, within a fraction of a step.
        assert abs(layer.onnx.rms_steps - layer.int8.rms_steps) < 0.05
        assert abs(layer.onnx.max_steps - layer.int8.max_steps) < 0.5


@pytest.mark.onnx
@pytest.mark.hf
def test_gpt2_regions_are_matched_in_the_onnx_file(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64,
                                  bos_token_id=0, eos_token_id=0, use_cache=False)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 64, (2, 8))
    q = fxquant.quantize(model, (ids,))
    fxquant.export_onnx(q, tmp_path / "g.onnx", (ids,))
    report = error_report(model, q, [(ids,)], onnx_path=tmp_path / "g.onnx")
    names = {x.name for x in report.layers}
    assert names == {x.name for x in fxquant.record_of(q).quantized_layers}
    assert not report.missing
    for layer in report.layers:
        assert abs(layer.onnx.relative - layer.int8.relative) < 0.1 * layer.int8.relative + 1e-6
