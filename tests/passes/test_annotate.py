"""Tests for the annotate pass: policy only, recorded in node.meta, nothing inserted."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fxquant import QuantConfig, passes
from fxquant.capture import capture
from fxquant.graph import kind_of


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class Policy(nn.Module):
    """One candidate per refusal reason, plus ordinary layers that must be quantized."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.block = Block()
        self.head = nn.Linear(8, 8)
        self.tiny = nn.Linear(8, 2)  # 16 weights
        self.fc64 = nn.Linear(8, 8).double()
        self.scale = nn.Parameter(torch.ones(8, 8))
        self.conv = nn.Conv1d(8, 8, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        x = self.block(x)
        x = self.head(x) + self.fc64(x.double()).float()
        x = x + F.linear(x, self.scale * 2.0)  # computed weight
        x = x + F.conv1d(x.transpose(1, 2), self.conv.weight, stride=1).transpose(1, 2)
        return self.tiny(x)


def _annotate(config: QuantConfig):
    model = Policy().eval()
    ids = torch.randint(0, 10, (2, 5))
    gm = capture(model, (ids,), config)
    ctx = passes.PassContext(config=config, example_inputs=(ids,))
    code_before = None

    def canonical_then_snapshot(gm, ctx):
        nonlocal code_before
        result = passes.run_canonicalize(gm, ctx)
        gm.recompile()
        code_before = gm.code
        return result

    gm = passes.run_passes(gm, (canonical_then_snapshot, passes.ANNOTATE), ctx)
    gm.graph.lint()
    assert gm.code == code_before  # annotation changes metadata only
    return gm, ctx


def _by_source(gm) -> dict[str, dict]:
    out = {}
    for node in gm.graph.nodes:
        if kind_of(node):
            out[node.meta["fxquant"].get("source", node.name)] = node.meta["fxquant"]
    return out


def test_every_candidate_gets_a_decision():
    gm, ctx = _annotate(QuantConfig(skip=("block.fc2",), min_weight_elements=20))
    info = _by_source(gm)
    quantized = sorted(s for s, m in info.items() if m["quantize"])
    assert quantized == ["block.fc1", "emb", "head"]
    for source in quantized:
        assert info[source]["mode"] == "dynamic"
        assert "reason" not in info[source]
    assert info["emb"]["kind"] == "embedding" and info["head"]["kind"] == "linear"

    reasons = {s: m["reason"] for s, m in info.items() if not m["quantize"]}
    assert reasons["block.fc2"] == "listed in QuantConfig.skip"
    assert reasons["tiny"] == "16 weights < QuantConfig.min_weight_elements"
    assert reasons["fc64"] == "weight dtype torch.float64 is not float32"
    assert reasons["conv"] == "conv called with keyword arguments"
    computed = [r for s, r in reasons.items() if s not in ("block.fc2", "tiny", "fc64", "conv")]
    assert computed == ["weight is computed in the graph, not a parameter"]
    # The same reasons are in the pass context's refusals, by node name.
    assert sorted(r for _, r in ctx.refusals["annotate"]) == sorted(reasons.values())


def test_skip_prefix_skips_everything_below_it():
    gm, _ = _annotate(QuantConfig(skip=("block",)))
    info = _by_source(gm)
    assert not info["block.fc1"]["quantize"] and not info["block.fc2"]["quantize"]
    assert info["head"]["quantize"]


def test_skip_is_a_name_prefix_of_modules_not_of_strings():
    # "bloc" is not a module; it must not skip "block.*".
    gm, _ = _annotate(QuantConfig(skip=("bloc",)))
    assert _by_source(gm)["block.fc1"]["quantize"]


def test_embeddings_can_be_kept_float():
    gm, _ = _annotate(QuantConfig(quantize_embeddings=False, mode="weight_only"))
    info = _by_source(gm)
    assert info["emb"] == {
        "source": "emb",
        "kind": "embedding",
        "quantize": False,
        "mode": "weight_only",
        "reason": "QuantConfig.quantize_embeddings is False",
    }
    assert info["head"]["mode"] == "weight_only"


def test_annotate_reports_unmodified():
    config = QuantConfig()
    ids = torch.randint(0, 10, (2, 5))
    gm = capture(Policy().eval(), (ids,), config)
    ctx = passes.PassContext(config=config)
    passes.run_canonicalize(gm, ctx)
    assert passes.run_annotate(gm, ctx).modified is False
