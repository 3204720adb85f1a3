"""smooth_quant (with insert_statistics and drop_statistics): golden graphs, the fp32 function
kept exactly, what must not be smoothed left alone, static ranges, and the accuracy it buys."""

from __future__ import annotations

import operator

import pytest
import torch
from torch import nn

import fxquant
from fxquant import QuantConfig, passes
from fxquant.algorithms.statistics import InputStatistics
from fxquant.errors import CalibrationError, ConfigError
from fxquant.graph import fetch_attr
from fxquant.observers import MinMaxObserver
from tests.passes.accuracy_models import PostNorm, PreNorm, batches, calls, rel, run_until

SQ = QuantConfig(mode="dynamic", smoothquant_alpha=0.5)


def _smoothed(gm):
    return {n.meta["fxquant"]["source"]: n.meta["fxquant"]["smoothquant"]
            for n in gm.graph.nodes if "smoothquant" in n.meta.get("fxquant", {})}


def test_statistics_sit_on_each_distinct_linear_input_and_are_dropped():
    observed = fxquant.prepare(PreNorm().eval(), batches()[0], SQ)
    stats = [n for n in observed.graph.nodes if n.op == "call_module"
             and isinstance(fetch_attr(observed, n.target), InputStatistics)]
    # q and k share the LayerNorm's output: one observer; fc and out: one each.
    assert [n.target for n in stats] == ["fxq.q_in_stats", "fxq.fc_in_stats", "fxq.out_in_stats"]
    assert len(stats[0].users) == 2
    gm = run_until(PreNorm().eval(), SQ, passes.DROP_STATISTICS)
    assert not any(n.op == "call_module" and isinstance(fetch_attr(gm, n.target), InputStatistics)
                   for n in gm.graph.nodes)


def test_layer_norm_feeding_only_linears_absorbs_the_division():
    model = PreNorm().eval()
    gm = run_until(model, SQ, passes.SMOOTH_QUANT)
    info = _smoothed(gm)
    assert info["q"] == info["k"] == {"alpha": 0.5, "input": "folded into ln"}
    # fc reads a product, out a ReLU: explicit multiplies by 1/s, one buffer each.
    assert info["fc"]["input"] == info["out"]["input"] == "mul"
    muls = calls(gm, torch.mul)
    assert [m.args[1].target for m in muls] == ["fxq.fc_smooth", "fxq.out_smooth"]
    assert gm.get_buffer("fxq.fc_smooth").shape == (64,)
    assert not hasattr(gm.fxq, "q_smooth")
    # The LayerNorm's parameters were replaced, not written: the user's model is untouched.
    assert not torch.equal(gm.ln.weight, model.ln.weight)
    assert float(model.ln.weight[0].detach()) == 25.0


@pytest.mark.parametrize("model_cls", [PreNorm, PostNorm])
@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_smoothed_graph_computes_the_float_function(model_cls, alpha):
    model = model_cls().eval()
    gm = run_until(model, SQ.replace(smoothquant_alpha=alpha), passes.DROP_STATISTICS)
    x = batches(seed=7)[0][0]
    with torch.no_grad():
        assert rel(gm(x), model(x)) < 1e-5


def test_layer_norm_read_by_the_residual_too_gets_an_explicit_multiply():
    model = PostNorm().eval()
    gm = run_until(model, SQ, passes.SMOOTH_QUANT)
    assert _smoothed(gm) == {"fc": {"alpha": 0.5, "input": "mul"}}
    assert torch.equal(gm.ln.weight, model.ln.weight)  # not folded
    (mul,) = calls(gm, torch.mul)
    # Only the linear's path is divided; the residual add still reads the LayerNorm itself.
    add = next(n for n in gm.graph.nodes if n.target in (operator.add, torch.add))
    assert mul.args[0] is add.args[0]


def test_what_must_not_be_smoothed_stays_untouched():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(64, 64)
            self.ln = nn.LayerNorm(64)
            self.other = nn.Linear(64, 64)

        def forward(self, ids):
            h = self.ln(self.emb(ids))
            return torch.nn.functional.linear(h, self.emb.weight) + self.other(h)

    model = Tied().eval()
    config = SQ.replace(skip=("other",))
    ids = [(torch.randint(0, 64, (2, 8)),) for _ in range(3)]
    observed = fxquant.prepare(model, ids[0], config)
    fxquant.calibrate(observed, ids[1:])
    ctx = passes.PassContext(config=config)
    gm = passes.run_passes(observed, passes.CONVERT[:2], ctx)
    assert _smoothed(gm) == {}  # the tied lm_head-style linear is refused, the skipped one unseen
    (refusal,) = ctx.refusals["smooth_quant"]
    assert "tied" in refusal[1]
    assert not calls(gm, torch.mul) and torch.equal(gm.ln.weight, model.ln.weight)


def test_off_by_default_no_statistics_no_change():
    gm = run_until(PreNorm().eval(), QuantConfig(), passes.DROP_STATISTICS)
    assert not calls(gm, torch.mul)
    assert not [n for n in gm.graph.nodes if "in_stats" in str(n.target)]


def test_static_ranges_are_those_of_the_smoothed_input():
    config = QuantConfig(mode="static", smoothquant_alpha=0.5)
    model = PreNorm().eval()
    gm = run_until(model, config, passes.SMOOTH_QUANT)
    # Re-observe the smoothed graph from scratch: the derived ranges must be the measured ones.
    derived = {n.target: (fetch_attr(gm, n.target).min_val, fetch_attr(gm, n.target).max_val)
               for n in gm.graph.nodes if n.op == "call_module"
               and type(fetch_attr(gm, n.target)) is MinMaxObserver}
    for target in derived:
        fresh = MinMaxObserver("check")
        setattr(gm.fxq, target.split(".")[1], fresh)
    gm.recompile()
    with torch.no_grad():
        for (x,) in batches()[1:]:
            gm(x)
    for target, (lo, hi) in derived.items():
        obs = fetch_attr(gm, target)
        assert obs.min_val == pytest.approx(lo, rel=1e-5) and obs.max_val == pytest.approx(hi,
                                                                                          rel=1e-5)


def test_dynamic_smoothquant_without_calibration_says_what_needs_it():
    with pytest.raises(CalibrationError, match="SmoothQuant"):
        fxquant.quantize(PreNorm().eval(), batches()[0], config=SQ)
    observed = fxquant.prepare(PreNorm().eval(), batches()[0], SQ)
    with pytest.raises(CalibrationError, match=r"SmoothQuant \(smoothquant_alpha=0.5\)"):
        fxquant.convert(observed)


def test_smoothquant_is_refused_where_it_cannot_help():
    with pytest.raises(ConfigError, match="weight_only"):
        QuantConfig(mode="weight_only", smoothquant_alpha=0.5)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_smoothing_outlier_channels_makes_int8_more_accurate(mode):
    model = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 64)).eval()
    with torch.no_grad():
        model[0].weight[:3] = 50.0  # three outlier channels take most of the per-tensor range
    data = batches()
    x = batches(seed=9)[0][0]
    with torch.no_grad():
        ref = model(x)
        errors = {}
        for alpha in (None, 0.5):
            config = QuantConfig(mode=mode, smoothquant_alpha=alpha)
            q = fxquant.quantize(model, data[0], calibration=data[1:], config=config)
            errors[alpha] = rel(q(x), ref)
    assert errors[0.5] < 0.5 * errors[None], errors
