"""gptq: the graph and buffers are round-to-nearest's, the codes are GPTQ's, and the layer
reconstructs its outputs better than round-to-nearest."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxquant
from fxquant import QuantConfig, ops, passes
from fxquant.errors import CalibrationError
from fxquant.graph import fetch_attr
from tests.passes.accuracy_models import PreNorm, batches, calls, rel

W4 = dict(mode="weight_only", weight_bits=4, weight_granularity="per_group", group_size=32)


def _correlated(n: int, seed: int) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(8, 64, generator=torch.Generator().manual_seed(99))
    return [((torch.randn(4, 32, 8, generator=g) @ mix) + 0.05 * torch.randn(4, 32, 64,
                                                                          generator=g),)
            for _ in range(n)]


def _convert(model, config, data):
    with torch.no_grad():
        return fxquant.quantize(model, data[0], calibration=data[1:], config=config)


@pytest.mark.parametrize("config", [QuantConfig(**W4), QuantConfig(mode="weight_only")],
                         ids=["w4g32", "w8-per-channel"])
def test_gptq_layer_error_is_below_round_to_nearest(config):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48)).eval()
    data = _correlated(8, seed=1)
    x = _correlated(1, seed=2)[0][0]
    with torch.no_grad():
        ref = model(x)
        rtn = rel(_convert(model, config, data)(x), ref)
        gptq = rel(_convert(model, config.replace(weight_method="gptq"), data)(x), ref)
    assert gptq < 0.7 * rtn, (gptq, rtn)


def test_gptq_keeps_the_round_to_nearest_graph_and_layout():
    model = PreNorm().eval()
    data = batches()
    rtn = _convert(model, QuantConfig(**W4), data)
    gptq = _convert(model, QuantConfig(**W4, weight_method="gptq"), data)
    assert [n.target for n in rtn.graph.nodes] == [n.target for n in gptq.graph.nodes]
    assert len(calls(gptq, ops.linear_weight_only_grouped)) == 4
    a, b = rtn.state_dict(), gptq.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape for k in a)
    # The clip search only ever narrows a group's range; the codes are GPTQ's own.
    assert bool((b["fxq.fc_w_scale"] <= a["fxq.fc_w_scale"]).all())
    assert not torch.equal(a["fxq.fc_w_int4"], b["fxq.fc_w_int4"])
    # Without it, static groups keep round-to-nearest's parameters exactly.
    plain = _convert(model, QuantConfig(**W4, weight_method="gptq", gptq_clip_search=False),
                     data).state_dict()
    assert torch.equal(a["fxq.fc_w_scale"], plain["fxq.fc_w_scale"])
    assert torch.equal(a["fxq.fc_w_zp"], plain["fxq.fc_w_zp"])


def test_gptq_records_its_damping_and_leaves_a_tied_weight_to_rounding():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(64, 64)
            self.fc = nn.Linear(64, 64)

        def forward(self, ids):
            h = self.fc(self.emb(ids))
            return torch.nn.functional.linear(h, self.emb.weight)

    config = QuantConfig(mode="dynamic", weight_method="gptq")
    ids = [(torch.randint(0, 64, (2, 8)),) for _ in range(3)]
    observed = fxquant.prepare(Tied().eval(), ids[0], config)
    fxquant.calibrate(observed, ids[1:])
    ctx = passes.PassContext(config=config)
    gm = passes.run_passes(observed, passes.CONVERT[:3], ctx)
    fc = next(n for n in gm.graph.nodes if n.meta.get("fxquant", {}).get("source") == "fc")
    assert fc.meta["fxquant"]["gptq"]["damp"] == pytest.approx(0.01)
    assert fetch_attr(gm, fc.args[1].target).precomputed is not None
    (refusal,) = ctx.refusals["gptq"]
    assert "tied" in refusal[1]


def test_gptq_needs_calibration_data():
    with pytest.raises(CalibrationError, match="weight_method='gptq'"):
        fxquant.quantize(PreNorm().eval(), batches()[0],
                         config=QuantConfig(**W4, weight_method="gptq"))
