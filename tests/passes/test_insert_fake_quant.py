"""Golden-graph tests for insert_fake_quant: observers become fake quantizers, one per weight and
one per distinct matmul input, on tensors the gradient reaches."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from torch import nn

import fxquant
from fxquant import QuantConfig, passes
from fxquant.fake_quantizers import ActivationFakeQuant, WeightFakeQuant
from fxquant.graph import fetch_attr
from fxquant.observers import Observer, WeightObserver


class SharedInput(nn.Module):
    """``a`` and ``b`` read the same tensor; ``emb`` has no activation to quantize."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        return self.c(self.a(x) * self.b(x))


class Transposed(nn.Module):
    """A GPT-2 ``Conv1D``-style layer: weight stored [in, out], ``addmm(b, x, W)``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 6))
        self.bias = nn.Parameter(torch.randn(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight)


def _modules(gm: fx.GraphModule, kind: type) -> list[nn.Module]:
    return [fetch_attr(gm, n.target) for n in gm.graph.nodes if n.op == "call_module"
            and isinstance(fetch_attr(gm, n.target), kind)]


def _qat(model, example, mode):
    observed = fxquant.prepare(model, example, QuantConfig(mode=mode))
    ctx = passes.PassContext(config=QuantConfig(mode=mode))
    return passes.run_passes(observed, passes.QAT_PREPARE, ctx)


@pytest.mark.parametrize(("mode", "activations"), [("dynamic", 2), ("static", 2),
                                                     ("weight_only", 0)])
def test_observers_become_fake_quantizers(mode, activations):
    gm = _qat(SharedInput(), (torch.randint(0, 10, (2, 3)),), mode)
    gm.graph.lint()
    assert not _modules(gm, Observer) and not _modules(gm, WeightObserver)
    weights = _modules(gm, WeightFakeQuant)
    assert sorted(w.target for w in weights) == ["a", "b", "c", "emb"]
    acts = _modules(gm, ActivationFakeQuant)
    # a and b share their input: one quantizer for it, one for c's input.
    assert len(acts) == activations
    assert all(a.kind == ("static" if mode == "static" else "dynamic") for a in acts)
    # Same names as the observers they replace.
    assert {n.target for n in gm.graph.nodes if n.op == "call_module"} >= {
        "fxq.a_w_obs", "fxq.b_w_obs", "fxq.c_w_obs", "fxq.emb_w_obs"}


def test_transposed_weight_is_read_through_torch_t():
    gm = _qat(Transposed(), (torch.randn(4, 8),), "dynamic")
    (fq,) = [n for n in gm.graph.nodes if n.op == "call_module"
             and isinstance(fetch_attr(gm, n.target), WeightFakeQuant)]
    source = fq.args[0]
    assert source.target is torch.t and source.args[0].target == "weight"
    assert "weight_t" not in dict(gm.named_parameters())  # the view is gone
    x = torch.randn(4, 8, requires_grad=True)
    gm(x).sum().backward()
    assert gm.weight.grad is not None and gm.weight.grad.abs().sum() > 0


def test_folded_batchnorm_weights_are_trainable():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    gm = _qat(model, (torch.randn(2, 3, 8, 8),), "dynamic")
    folded = [n for n in gm.graph.nodes if "folded_batchnorm" in n.meta.get("fxquant", {})]
    assert len(folded) == 1
    gm(torch.randn(2, 3, 8, 8)).sum().backward()
    trained = [n for n, p in gm.named_parameters() if p.grad is not None and p.grad.abs().sum()]
    assert any(n.endswith("_folded") for n in trained)


def test_freeze_gives_back_observers_and_no_fake_quantizer():
    gm = _qat(SharedInput(), (torch.randint(0, 10, (2, 3)),), "static")
    gm(torch.randint(0, 10, (2, 3)))  # the first batch sets the static ranges
    frozen = passes.run_passes(gm, passes.QAT_FREEZE, passes.PassContext(
        config=QuantConfig(mode="static")))
    frozen.graph.lint()
    assert not _modules(frozen, WeightFakeQuant) and not _modules(frozen, ActivationFakeQuant)
    assert len(_modules(frozen, WeightObserver)) == 4
    assert all(o.batches == 1 for o in _modules(frozen, Observer))


def test_freeze_reads_transposed_weights_through_the_view_again():
    gm = _qat(Transposed(), (torch.randn(4, 8),), "dynamic")
    frozen = passes.run_passes(gm, passes.QAT_FREEZE, passes.PassContext(config=QuantConfig()))
    (obs,) = [n for n in frozen.graph.nodes if n.op == "call_module"]
    assert obs.args[0].op == "get_attr" and obs.args[0].target == "weight_t"
    assert torch.equal(fetch_attr(frozen, "weight_t"), frozen.weight.t())
    # No dynamic quantizer is left: lower_to_int8 inserts dynamic quantization itself.
    assert not _modules(frozen, ActivationFakeQuant)
