"""fxquant.save / fxquant.load of models made with the accuracy options: SmoothQuant (dynamic and
static), AWQ and GPTQ with 4-bit group-wise weights, per-token activations. The structural replay
must rebuild the same graph without calibration data and the outputs must be bit-identical."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxquant
from fxquant import QuantConfig

W4 = dict(mode="weight_only", weight_bits=4, weight_granularity="per_group", group_size=32)


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))
    with torch.no_grad():
        model[0].weight[:3] = 20.0
    return model.eval()


@pytest.mark.parametrize("config", [
    QuantConfig(**W4, weight_method="gptq", weight_symmetric=False),
    QuantConfig(**W4, weight_method="awq"),
    QuantConfig(smoothquant_alpha=0.8),
    QuantConfig(mode="static", smoothquant_alpha=0.8),
    QuantConfig(activation_granularity="per_token"),
], ids=["gptq-w4", "awq-w4", "sq-dynamic", "sq-static", "per-token"])
def test_saved_accuracy_options_load_bit_identical(tmp_path, config):
    model = _model()
    x = torch.randn(4, 64)
    calibration = [(torch.randn(4, 64),) for _ in range(3)]
    q = fxquant.quantize(model, (x,), calibration=calibration, config=config)
    fxquant.save(q, tmp_path / "saved")
    loaded = fxquant.load(tmp_path / "saved", model=_model())
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
    assert q.state_dict().keys() == loaded.state_dict().keys()
