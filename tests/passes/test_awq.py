"""awq: golden graph (scales folded into the LayerNorm or an explicit multiply), the fp32
function kept, lower output error than round-to-nearest on a layer with outlier channels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxquant
from fxquant import QuantConfig, passes
from fxquant.errors import CalibrationError
from tests.passes.accuracy_models import PreNorm, batches, calls, rel, run_until

W4 = dict(mode="weight_only", weight_bits=4, weight_granularity="per_group", group_size=32)
AWQ = QuantConfig(**W4, weight_method="awq")


def test_awq_scales_fold_or_multiply_and_keep_the_float_function():
    model = PreNorm().eval()
    gm = run_until(model, AWQ, passes.DROP_STATISTICS)
    info = {n.meta["fxquant"]["source"]: n.meta["fxquant"]["awq"] for n in gm.graph.nodes
            if "awq" in n.meta.get("fxquant", {})}
    assert set(info) == {"q", "k", "fc", "out"}
    assert info["q"]["input"] == "folded into ln" and info["fc"]["input"] == "mul"
    assert info["q"] is info["k"]  # one search for the two layers sharing the input
    for record in info.values():
        assert 0.0 <= record["alpha"] < 1.0 and record["error"] <= record["rtn_error"]
    assert [m.args[1].target for m in calls(gm, torch.mul)] == ["fxq.fc_smooth",
                                                                 "fxq.out_smooth"]
    x = batches(seed=5)[0][0]
    with torch.no_grad():
        assert rel(gm(x), model(x)) < 1e-5


def test_awq_beats_round_to_nearest_on_outlier_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 64)).eval()
    with torch.no_grad():
        model[0].weight[:4] = 20.0
    data = batches(n=6)
    x = batches(seed=11)[0][0]
    with torch.no_grad():
        ref = model(x)
        errors = {m: rel(fxquant.quantize(model, data[0], calibration=data[1:],
                                          config=QuantConfig(**W4, weight_method=m))(x), ref)
                  for m in ("rtn", "awq")}
    assert errors["awq"] < 0.9 * errors["rtn"], errors


def test_awq_needs_calibration_data():
    with pytest.raises(CalibrationError, match="weight_method='awq'"):
        fxquant.quantize(PreNorm().eval(), batches()[0], config=AWQ)


def test_replay_builds_the_same_graph_without_data():
    """A saved model is rebuilt structurally (ctx.replay): same nodes and buffers, s = 1."""
    observed = fxquant.prepare(PreNorm().eval(), batches()[0], AWQ)
    ctx = passes.PassContext(config=AWQ)
    ctx.replay = True
    gm = passes.run_passes(observed, passes.CONVERT[:2], ctx)
    assert [m.args[1].target for m in calls(gm, torch.mul)] == ["fxq.fc_smooth",
                                                                 "fxq.out_smooth"]
    assert torch.equal(gm.get_buffer("fxq.fc_smooth"), torch.ones(64))
