"""Golden-graph tests for fuse_dequant_matmul: dequantize -> matmul becomes one int8 op, and
whatever must not be fused stays unfused with a reason."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant import QuantConfig, ops, passes
from fxquant.graph import fetch_attr
from tests.models import DecoderConfig, GPT2Decoder, make_inputs

DEC = DecoderConfig(n_layer=2, d_model=64, n_head=4, d_mlp=256, vocab=100, n_ctx=64)
FUSED = {
    "dynamic": ops.linear_dynamic,
    "static": ops.linear_static,
    "weight_only": ops.linear_weight_only,
}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.conv = nn.Conv1d(8, 8, 1)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 8)
        self.skipped = nn.Linear(8, 8)
        self.w = nn.Parameter(torch.randn(8, 8) * 0.1)
        self.kw_w = nn.Parameter(torch.randn(8, 8) * 0.1)
        self.kw_b = nn.Parameter(torch.randn(8))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        x = x + self.conv(x.transpose(1, 2)).transpose(1, 2)
        x = self.fc2(torch.relu(self.fc1(x)))
        x = self.skipped(x) + F.linear(x, self.w * 0.5)  # a computed weight
        return F.linear(x, self.kw_w, bias=self.kw_b)  # keyword bias: refused by fusion


def _ids(seed: int = 0) -> tuple[torch.Tensor]:
    return (torch.randint(0, 10, (2, 5), generator=torch.Generator().manual_seed(seed)),)


def run_upto(model: nn.Module, inputs: tuple, config: QuantConfig, last) -> tuple:
    gm = fxquant.capture(model, inputs, config)
    ctx = passes.PassContext(config=config, example_inputs=inputs,
                             calibration=[_ids(s) for s in range(1, 4)])
    upto = passes.PIPELINE[: passes.PIPELINE.index(last) + 1]
    gm = passes.run_passes(gm, upto, ctx)
    gm.graph.lint()
    return gm, ctx


def _calls(gm: fx.GraphModule, target) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is target]


def _source(node: fx.Node) -> str | None:
    return node.meta.get("fxquant", {}).get("source")


@pytest.mark.parametrize("mode", ["dynamic", "static", "weight_only"])
def test_quantized_linears_become_one_fused_op(mode):
    gm, _ = run_upto(Net().eval(), _ids(), QuantConfig(mode=mode, skip=("skipped",)),
                     passes.FUSE_DEQUANT_MATMUL)
    fused = _calls(gm, FUSED[mode])
    assert sorted(_source(n) for n in fused) == ["fc1", "fc2"]
    for other in set(FUSED.values()) - {FUSED[mode]}:
        assert not _calls(gm, other)
    for node in fused:
        src = _source(node)
        attrs = [a.target for a in node.args if isinstance(a, fx.Node) and a.op == "get_attr"]
        assert attrs == [f"fxq.{src}_w_int8", f"fxq.{src}_w_scale", f"fxq.{src}_w_zp",
                         f"fxq.{src}_bias"]
    # The fused op takes the raw activation: no separate quantize ops remain for fc1/fc2.
    if mode == "static":
        for node in _calls(gm, ops.linear_static):
            x, x_scale, x_zp, rr = node.args[:4]
            assert x.target not in (ops.dequantize_activation, ops.quantize_activation)
            assert isinstance(x_scale, float) and isinstance(x_zp, int)
            assert rr is QuantConfig().reduce_range
    # Only the keyword-bias linear still quantizes its input separately (the conv is fused too).
    live_q = [n for n in _calls(gm, ops.quantize_activation) if any(d.users for d in n.users)]
    assert len(live_q) == (1 if mode == "static" else 0)
    conv_op = {"dynamic": ops.conv_dynamic, "static": ops.conv_static}.get(mode)
    assert [_source(n) for n in _calls(gm, conv_op)] == ([] if conv_op is None else ["conv"])
    (emb,) = _calls(gm, ops.embedding)
    assert [a.target for a in emb.args[1:]] == ["fxq.emb_w_int8", "fxq.emb_w_scale", "fxq.emb_w_zp"]


def test_negative_cases_stay_unfused():
    gm, ctx = run_upto(Net().eval(), _ids(), QuantConfig(skip=("skipped",)),
                       passes.FUSE_DEQUANT_MATMUL)
    linears = {_source(n) or "computed": n for n in _calls(gm, F.linear)}
    # The skipped layer: F.linear on its float weight and an unquantized input.
    skipped = linears.pop("skipped")
    assert skipped.args[1].op == "get_attr" and skipped.args[1].target == "skipped.weight"
    assert fetch_attr(gm, "skipped.weight").dtype == torch.float32
    # The computed weight: F.linear on the product, never quantized.
    computed = linears.pop("computed")
    assert computed.args[1].target is operator.mul
    assert computed.args[1].args[0].target == "w"
    assert computed.meta["fxquant"]["quantize"] is False
    # The keyword-bias linear is quantized but not fused: dequantize + F.linear.
    kw = linears.pop("kw_w")
    assert kw.args[1].target is ops.dequantize_weight
    assert linears == {}

    # The conv is fused and takes the raw activation (the transpose), not its fake-quantized form.
    assert not _calls(gm, F.conv1d)
    (conv,) = _calls(gm, ops.conv_dynamic)
    assert conv.args[0].target == "transpose"

    assert ctx.refusals["fuse_dequant_matmul"] == [(kw.name,
                                                    "F.linear called with keyword arguments")]


def test_weight_only_conv_stays_dequantize_plus_conv():
    gm, ctx = run_upto(Net().eval(), _ids(), QuantConfig(mode="weight_only"),
                       passes.FUSE_DEQUANT_MATMUL)
    (conv,) = _calls(gm, F.conv1d)
    assert conv.args[1].target is ops.dequantize_weight
    assert (conv.name, "weight-only conv: no int8 conv kernel takes float activations; "
            "dequantize + conv") in ctx.refusals["fuse_dequant_matmul"]


def test_refusals_reach_the_converted_model():
    qmodel = fxquant.quantize(Net().eval(), _ids())
    refusals = qmodel.meta["fxquant"]["refusals"]
    assert [reason for _, reason in refusals["fuse_dequant_matmul"]] == [
        "F.linear called with keyword arguments"]
    assert any(r == "weight is computed in the graph, not a parameter"
               for _, r in refusals["annotate"])


@pytest.mark.parametrize("mode", ["dynamic", "static", "weight_only"])
def test_fused_graph_computes_what_the_lowered_graph_computes(mode):
    config = QuantConfig(mode=mode)
    model = Net().eval()
    lowered, _ = run_upto(model, _ids(), config, passes.LOWER_TO_INT8)
    fused, _ = run_upto(model, _ids(), config, passes.FUSE_DEQUANT_MATMUL)
    ids = _ids(7)[0]
    with torch.no_grad(), ops.reference_kernels():
        expected, got = lowered(ids), fused(ids)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_tied_embedding_and_lm_head_share_one_int8_buffer():
    model = GPT2Decoder(DEC, seed=0)
    gm, _ = run_upto(model, make_inputs("gpt2", 2, 8, cfg=DEC), QuantConfig(),
                     passes.FUSE_DEQUANT_MATMUL)
    (emb,) = [n for n in _calls(gm, ops.embedding) if n.args[1].target.startswith("fxq.wte")]
    head = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    assert head.target is ops.linear_dynamic
    assert head.args[1] is emb.args[1] and emb.args[1].target == "fxq.wte_w_int8"
    assert head.args[4] is None  # the tied head has no bias
    assert len(_calls(gm, ops.linear_dynamic)) == 2 * 4 + 1
    assert not _calls(gm, F.linear)
    # The dequantize nodes are dead now (cleanup removes them).
    assert all(not n.users for n in _calls(gm, ops.dequantize_weight))


def test_nothing_to_fuse_reports_unmodified():
    gm, ctx = run_upto(Net().eval(), _ids(), QuantConfig(), passes.FUSE_DEQUANT_MATMUL)
    result = passes.run_fuse_dequant_matmul(gm, ctx)
    assert result.modified is False
