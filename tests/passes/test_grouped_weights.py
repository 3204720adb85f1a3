"""Group-wise weights through annotate, lower_to_int8 and fuse_dequant_matmul: golden graphs,
buffer dtypes and shapes, the fallback for a width the group size does not divide, and numerics
within half a quantization step per weight."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant import QuantConfig, ops, passes
from fxquant.algorithms import groupwise
from fxquant.graph import ROLES
from tests.passes.accuracy_models import calls


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 64)
        self.fc1 = nn.Linear(64, 96)
        self.fc2 = nn.Linear(96, 30)  # 96 = 3 groups of 32
        self.fc3 = nn.Linear(30, 8)  # 30: no group size divides it evenly here

    def forward(self, ids):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(self.emb(ids))))))


def _ids(seed=0):
    return (torch.randint(0, 10, (2, 5), generator=torch.Generator().manual_seed(seed)),)


def _config(bits=4, **kw):
    return QuantConfig(mode="weight_only", weight_bits=bits, weight_granularity="per_group",
                       group_size=32, **kw)


def test_annotate_gives_each_linear_its_group_or_the_reason_it_has_none():
    observed = fxquant.prepare(Net().eval(), _ids(), _config())
    groups = {n.meta["fxquant"]["source"]: n.meta["fxquant"].get("group_size")
              for n in observed.graph.nodes if n.meta.get("fxquant", {}).get("kind") == "linear"}
    assert groups == {"fc1": 32, "fc2": 32, "fc3": None}
    refusals = dict(observed.meta["fxquant"]["refusals"]["annotate"])
    assert refusals == {
        "embedding": "group-wise weights are for linears; this embedding keeps one scale per "
                     "output channel",
        "linear_2": "group_size 32 does not divide the 30 input channels; kept per-channel",
    }


def test_lowered_and_fused_graph_reads_packed_codes():
    q = fxquant.quantize(Net().eval(), _ids(), config=_config())
    grouped = calls(q, ops.linear_weight_only_grouped)
    assert [n.meta["fxquant"]["source"] for n in grouped] == ["fc1", "fc2"]
    assert [n.args[5] for n in grouped] == [32, 32]
    # fc3: per-channel 4-bit (in the runtime graph, a direct call of the weight-only kernel)
    assert len(calls(fxquant.portable(q), ops.linear_weight_only)) == 1
    sd = q.state_dict()
    assert "w_int4" in ROLES
    assert sd["fxq.fc1_w_int4"].dtype == torch.uint8 and sd["fxq.fc1_w_int4"].shape == (96, 32)
    assert sd["fxq.fc1_w_scale"].dtype == torch.float32 and sd["fxq.fc1_w_scale"].shape == (96, 2)
    assert sd["fxq.fc1_w_zp"].dtype == torch.uint8 and sd["fxq.fc1_w_zp"].shape == (96, 2)
    assert sd["fxq.fc3_w_int8"].dtype == torch.int8 and sd["fxq.fc3_w_scale"].shape == (8,)
    assert sd["fxq.emb_w_int8"].dtype == torch.int8  # tables stay per-row int8
    assert not any(k.endswith("weight") for k in sd)  # no float copy of a quantized weight


def test_packed_codes_round_trip_to_round_to_nearest():
    model = Net().eval()
    q = fxquant.quantize(model, _ids(), config=_config())
    expected = groupwise.quantize_groupwise(model.fc2.weight, 4, 32, symmetric=True)
    packed = q.state_dict()["fxq.fc2_w_int4"]
    assert torch.equal(groupwise.unpack_int4(packed), expected.codes)
    assert torch.equal(q.state_dict()["fxq.fc2_w_scale"], expected.scale)


@pytest.mark.parametrize("bits,role", [(3, "w_int4"), (6, "w_uint8"), (8, "w_uint8")])
def test_other_widths_store_one_or_two_codes_per_byte(bits, role):
    q = fxquant.quantize(Net().eval(), _ids(), config=_config(bits=bits))
    codes = q.state_dict()[f"fxq.fc1_{role}"]
    assert codes.dtype == torch.uint8
    assert codes.shape == ((96, 32) if role == "w_int4" else (96, 64))
    assert int(groupwise.stored_to_codes(codes, 64).max()) <= 2**bits - 1


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [32, 16])  # 32: the int4 kernel; 16: the reference
def test_grouped_linear_is_within_half_a_step_per_weight(symmetric, group):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 40)).eval()
    x = torch.randn(3, 7, 64)
    config = _config(weight_symmetric=symmetric).replace(group_size=group)
    q = fxquant.quantize(model, (x,), config=config)
    scale = q.state_dict()["fxq.0_w_scale"]
    with torch.no_grad():
        got, ref = q(x), model(x)
        with ops.reference_kernels():
            spec = q(x)
    # Against the stored weight's own function: float rounding only.
    torch.testing.assert_close(got, spec, rtol=1e-4, atol=1e-5)
    # Against fp32: each weight is within scale/2, so |err| <= sum_k |x_k| * step_k / 2.
    bound = (x.abs() @ (groupwise.expand_groups(scale, group) / 2).T) * (1 + 1e-4)
    assert bool(((got - ref).abs() <= bound).all())


def test_grouped_weights_are_weight_only():
    with pytest.raises(fxquant.ConfigError, match=r"per_group.*weight_only"):
        QuantConfig(mode="dynamic", weight_granularity="per_group")


def test_fusion_refuses_group_wise_weights_with_quantized_activations():
    """A hand-built graph: dynamic input with a group-wise weight has no fused kernel."""
    gm = fxquant.prepare(Net().eval(), _ids(), _config())
    gm = passes.run_passes(gm, passes.CONVERT[:5], passes.PassContext(config=_config()))
    fc1 = next(n for n in gm.graph.nodes if n.target is F.linear
               and n.meta["fxquant"]["source"] == "fc1")
    with gm.graph.inserting_before(fc1):
        fq = gm.graph.call_function(ops.fake_quantize_dynamic, (fc1.args[0], False))
    fc1.replace_input_with(fc1.args[0], fq)
    ctx = passes.PassContext(config=_config())
    passes.run_passes(gm, (passes.FUSE_DEQUANT_MATMUL,), ctx)
    assert any("group-wise weight with dynamic" in why
               for _, why in ctx.refusals["fuse_dequant_matmul"])


def test_a_single_layer_region_still_answers_its_float_weight():
    """Region-wise capture (Hugging Face models): a region that replaced one nn.Linear answers
    ``.weight`` (model code reads it), dequantized from the packed codes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    x = torch.randn(2, 64)
    q = fxquant.quantize(model, (x,), config=_config().replace(capture="regions"))
    region = q[0]
    scale = q.state_dict()["0.fxq.weight_w_scale"]
    assert region.weight.shape == model[0].weight.shape
    step = groupwise.expand_groups(scale, 32)
    assert bool(((region.weight - model[0].weight).abs() <= step / 2 * 1.0001).all())
