"""insert_statistics / drop_statistics: where the input statistics sit, what they record, and
that they leave no trace in the converted model."""

from __future__ import annotations

import torch

import fxquant
from fxquant import QuantConfig, passes
from fxquant.algorithms.statistics import InputStatistics
from fxquant.graph import fetch_attr
from fxquant.observers import MinMaxObserver
from tests.passes.accuracy_models import PreNorm, batches


def _modules(gm, cls):
    return [n for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(fetch_attr(gm, n.target), cls)]


def test_nothing_is_inserted_unless_an_algorithm_asks():
    for config in (QuantConfig(), QuantConfig(mode="static"), QuantConfig(mode="weight_only")):
        gm = fxquant.prepare(PreNorm().eval(), batches()[0], config)
        assert not _modules(gm, InputStatistics)


def test_gptq_collects_hessians_awq_rows_smoothquant_neither():
    data = batches()
    kinds = {"gptq": QuantConfig(mode="weight_only", weight_method="gptq"),
             "awq": QuantConfig(mode="weight_only", weight_method="awq"),
             "sq": QuantConfig(smoothquant_alpha=0.5)}
    for name, config in kinds.items():
        gm = fxquant.prepare(PreNorm().eval(), data[0], config)
        fxquant.calibrate(gm, data[1:])
        stats = fetch_attr(gm, "fxq.q_in_stats")
        rows = 3 * 2 * 16
        assert stats.rows == rows and stats.batches == 3
        assert (stats.hessian is not None) == (name == "gptq")
        assert stats.kept == (rows if name == "awq" else 0)
        x = torch.cat([gm.ln(b[0]).reshape(-1, 64) for b in data[1:]]).detach()
        torch.testing.assert_close(stats.abs_max, x.abs().amax(0))
        torch.testing.assert_close(stats.abs_mean, x.abs().mean(0))
        if name == "gptq":
            torch.testing.assert_close(stats.hessian, 2 * x.T @ x / rows, rtol=1e-4, atol=1e-4)


def test_static_activation_observers_sit_behind_the_statistics():
    config = QuantConfig(mode="static", smoothquant_alpha=0.5)
    gm = fxquant.prepare(PreNorm().eval(), batches()[0], config)
    for act in _modules(gm, MinMaxObserver):
        assert isinstance(fetch_attr(gm, act.args[0].target), InputStatistics)


def test_converted_model_holds_no_statistics():
    config = QuantConfig(mode="weight_only", weight_method="gptq")
    data = batches()
    q = fxquant.quantize(PreNorm().eval(), data[0], calibration=data[1:], config=config)
    assert not any(isinstance(m, InputStatistics) for m in q.modules())
    assert not any("in_stats" in k for k in q.state_dict())
    gm = fxquant.prepare(PreNorm().eval(), data[0], config)
    fxquant.calibrate(gm, data[1:])
    result = passes.run_drop_statistics(gm, passes.PassContext(config=config))
    assert result.modified and not _modules(result.graph_module, InputStatistics)
