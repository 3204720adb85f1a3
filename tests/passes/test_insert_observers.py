"""Golden-graph tests for insert_observers: weight observers always, activation observers in
static mode, one per distinct input; tied weights share one observer."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.fx as fx
from torch import nn

import fxquant
from fxquant import QuantConfig, passes
from fxquant.graph import fetch_attr, kind_of
from fxquant.observers import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    Observer,
    PercentileObserver,
    WeightObserver,
)
from tests.models import DecoderConfig, GPT2Decoder, make_inputs

DEC = DecoderConfig(n_layer=2, d_model=64, n_head=4, d_mlp=256, vocab=100, n_ctx=64)


class SharedInput(nn.Module):
    """``a`` and ``b`` read the same tensor; ``c`` reads another; ``emb`` has no activation."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        return self.c(self.a(x) * self.b(x))


def _ids() -> tuple[torch.Tensor]:
    return (torch.randint(0, 10, (2, 5)),)


def _observers(gm: fx.GraphModule, kind: type) -> list[fx.Node]:
    return [
        n for n in gm.graph.nodes
        if n.op == "call_module" and isinstance(fetch_attr(gm, n.target), kind)
    ]


def _matmul(gm: fx.GraphModule, source: str) -> fx.Node:
    return next(n for n in gm.graph.nodes if kind_of(n) and n.meta["fxquant"]["source"] == source)


def test_dynamic_mode_observes_weights_only():
    gm = fxquant.prepare(SharedInput(), _ids())
    gm.graph.lint()
    weight_obs = _observers(gm, WeightObserver)
    assert sorted(n.target for n in weight_obs) == [
        "fxq.a_w_obs", "fxq.b_w_obs", "fxq.c_w_obs", "fxq.emb_w_obs",
    ]
    assert _observers(gm, Observer) == []
    for node in weight_obs:
        (weight,) = node.args
        assert weight.op == "get_attr"
        assert weight.target == node.target.removeprefix("fxq.").removesuffix("_w_obs") + ".weight"
        # The quantizable op reads the weight through the observer.
        assert [u.op for u in node.users] == ["call_function"]
    a = _matmul(gm, "a")
    assert a.args[1].target == "fxq.a_w_obs"
    assert a.meta["fxquant"]["weight_observer"] == "fxq.a_w_obs"
    assert "act_observer" not in a.meta["fxquant"]


def test_weight_observer_carries_the_scheme():
    cfg = QuantConfig(weight_bits=4, weight_symmetric=False, weight_granularity="per_tensor")
    gm = fxquant.prepare(SharedInput(), _ids(), cfg)
    obs = gm.fxq.a_w_obs
    assert (obs.target, obs.bits, obs.symmetric, obs.per_channel, obs.axis) == (
        "a", 4, False, False, 0,
    )


def test_static_mode_one_activation_observer_per_distinct_input():
    gm = fxquant.prepare(SharedInput(), _ids(), QuantConfig(mode="static"))
    gm.graph.lint()
    act = _observers(gm, Observer)
    # a and b share their input: one observer; c has its own; the embedding has none.
    assert sorted(n.target for n in act) == ["fxq.a_act_obs", "fxq.c_act_obs"]
    a, b, c = (_matmul(gm, s) for s in "abc")
    assert a.args[0] is b.args[0] and a.args[0].target == "fxq.a_act_obs"
    assert b.meta["fxquant"]["act_observer"] == "fxq.a_act_obs"
    assert c.args[0].target == "fxq.c_act_obs"
    assert c.args[0].args[0].target is operator.mul  # the observer sits right on c's input
    assert "act_observer" not in _matmul(gm, "emb").meta["fxquant"]
    assert gm.fxq.c_act_obs.target == "input of c"
    assert len(_observers(gm, WeightObserver)) == 4


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("minmax", MinMaxObserver),
        ("moving_average", MovingAverageMinMaxObserver),
        ("percentile", PercentileObserver),
    ],
)
def test_activation_observer_kind_follows_config(name, cls):
    config = QuantConfig(mode="static", activation_observer=name)
    gm = fxquant.prepare(SharedInput(), _ids(), config)
    assert {type(fetch_attr(gm, n.target)) for n in _observers(gm, Observer)} == {cls}


def test_observed_model_computes_the_float_function():
    model = SharedInput().eval()
    gm = fxquant.prepare(model, _ids(), QuantConfig(mode="static"))
    ids = torch.randint(0, 10, (3, 7))
    with torch.no_grad():
        assert torch.equal(gm(ids), model(ids))


def test_skipped_layer_gets_no_observer():
    gm = fxquant.prepare(SharedInput(), _ids(), QuantConfig(mode="static", skip=("b",)))
    assert sorted(n.target for n in _observers(gm, WeightObserver)) == [
        "fxq.a_w_obs", "fxq.c_w_obs", "fxq.emb_w_obs",
    ]
    b = _matmul(gm, "b")
    assert b.args[1].op == "get_attr" and b.args[1].target == "b.weight"
    assert b.args[0].op == "call_function"  # the embedding output, not an observer


def test_tied_weights_share_one_observer():
    model = GPT2Decoder(DEC, seed=0)
    gm = fxquant.prepare(model, make_inputs("gpt2", 2, 8, cfg=DEC))
    gm.graph.lint()
    observers = _observers(gm, WeightObserver)
    wte_obs = [n for n in observers if fetch_attr(gm, n.target).target == "wte"]
    assert len(wte_obs) == 1
    users = sorted(u.target.__name__ for u in wte_obs[0].users)
    assert users == ["embedding", "linear"]  # the token embedding and the tied lm_head
    # 2 layers x 4 linears + wte + wpe.
    assert len(_observers(gm, WeightObserver)) == 10


def test_nan_weight_is_refused_naming_the_layer():
    model = SharedInput()
    with torch.no_grad():
        model.b.weight[2, 3] = float("nan")
    config = QuantConfig()
    gm = fxquant.capture(model, _ids(), config)
    ctx = passes.PassContext(config=config)
    with pytest.raises(fxquant.NonFiniteError, match=r"weight b holds 1 NaN/Inf"):
        passes.run_passes(gm, passes.PREPARE, ctx)
