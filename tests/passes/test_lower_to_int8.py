"""Golden-graph tests for lower_to_int8: observers become int8 buffers and explicit
quantize/dequantize ops, and the lowered graph computes the int8 model's function."""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant import QuantConfig, numerics, ops, passes
from fxquant.graph import kind_of
from fxquant.kernels import reference
from fxquant.observers import Observer, WeightObserver
from fxquant.passes.pack_weights import PACKED_LINEAR_OPS


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.conv = nn.Conv1d(8, 8, 1)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.fc2(torch.relu(self.fc1(x + h)))


def _ids(seed: int = 0) -> tuple[torch.Tensor]:
    return (torch.randint(0, 10, (2, 5), generator=torch.Generator().manual_seed(seed)),)


def lower(model: nn.Module, inputs: tuple, config: QuantConfig) -> fx.GraphModule:
    """Run the pipeline up to and including lower_to_int8."""
    gm = fxquant.capture(model, inputs, config)
    ctx = passes.PassContext(config=config, example_inputs=inputs,
                             calibration=[_ids(s) for s in range(1, 4)])
    upto = passes.PIPELINE[: passes.PIPELINE.index(passes.LOWER_TO_INT8) + 1]
    gm = passes.run_passes(gm, upto, ctx)
    gm.graph.lint()
    return gm


def _calls(gm: fx.GraphModule, target) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is target]


def test_weight_observers_become_int8_buffers():
    model = Net().eval()
    gm = lower(model, _ids(), QuantConfig())
    # No observer is called any more (cleanup, not this pass, drops the modules themselves).
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == []
    assert any(isinstance(m, (Observer, WeightObserver)) for m in gm.modules())

    deq = _calls(gm, ops.dequantize_weight)
    assert sorted(n.meta["fxquant"]["source"] for n in deq) == ["conv", "emb", "fc1", "fc2"]
    for node in deq:
        src = node.meta["fxquant"]["source"]
        codes, scale, zp, axis = node.args
        assert [a.target for a in (codes, scale, zp)] == [
            f"fxq.{src}_w_int8", f"fxq.{src}_w_scale", f"fxq.{src}_w_zp",
        ]
        assert axis == 0
        assert node.meta["fxquant"] | {"source": src} == {
            "source": src,
            "bits": QuantConfig().embedding_bits if src == "emb" else QuantConfig().weight_bits,
            "symmetric": True,
            "per_channel": True,
            # Weights that feed the int8 GEMM or conv get saturation-safe scales; gathered
            # tables do not.
            "pair_safe": src in ("fc1", "fc2", "conv"),
        }

    buffers = dict(gm.named_buffers())
    weight = model.fc1.weight
    assert buffers["fxq.fc1_w_int8"].dtype == torch.int8
    assert buffers["fxq.fc1_w_int8"].shape == weight.shape
    assert buffers["fxq.fc1_w_scale"].dtype == torch.float32
    assert buffers["fxq.fc1_w_scale"].shape == (16,)
    assert buffers["fxq.fc1_w_zp"].dtype == torch.int32
    expected = numerics.quantize_weight(weight, QuantConfig().weight_bits, symmetric=True,
                                        per_channel=True, pair_safe=True)
    assert torch.equal(buffers["fxq.fc1_w_int8"], expected.codes)
    assert torch.equal(buffers["fxq.fc1_w_scale"], expected.scale)
    # Biases moved into fxq; fc2 has none.
    assert torch.equal(buffers["fxq.fc1_bias"], model.fc1.bias.detach())
    assert "fxq.conv_bias" in buffers and "fxq.fc2_bias" not in buffers


def test_matmuls_read_the_dequantized_weight():
    gm = lower(Net().eval(), _ids(), QuantConfig())
    for node in gm.graph.nodes:
        if kind_of(node):
            assert node.args[1].target is ops.dequantize_weight
    (fc1,) = [n for n in _calls(gm, F.linear) if n.meta["fxquant"]["source"] == "fc1"]
    assert fc1.args[2].target == "fxq.fc1_bias"


def test_dynamic_mode_fake_quantizes_each_distinct_input():
    gm = lower(Net().eval(), _ids(), QuantConfig(mode="dynamic", reduce_range=True))
    fq = _calls(gm, ops.fake_quantize_dynamic)
    # conv, fc1 and fc2 inputs; the embedding's indices are not quantized.
    assert len(fq) == 3
    assert all(n.args[1] is True for n in fq)
    assert {u.meta["fxquant"]["source"] for n in fq for u in n.users} == {"conv", "fc1", "fc2"}
    assert not _calls(gm, ops.quantize_activation)


def test_static_mode_inserts_quantize_dequantize_with_calibrated_params():
    gm = lower(Net().eval(), _ids(), QuantConfig(mode="static", reduce_range=False))
    q = _calls(gm, ops.quantize_activation)
    dq = _calls(gm, ops.dequantize_activation)
    assert len(q) == len(dq) == 3
    assert not _calls(gm, ops.fake_quantize_dynamic)
    for node in q:
        _, scale, zp, rr = node.args
        lo, hi = node.meta["fxquant"]["range"]
        assert lo <= hi and node.meta["fxquant"]["batches"] == 3
        assert (scale, zp) == numerics.activation_qparams(lo, hi, False)
        assert rr is False
        (user,) = node.users
        assert user.target is ops.dequantize_activation and user.args == (node, scale, zp)


def test_weight_only_mode_leaves_activations_float():
    gm = lower(Net().eval(), _ids(), QuantConfig(mode="weight_only"))
    for target in (ops.fake_quantize_dynamic, ops.quantize_activation, ops.dequantize_activation):
        assert not _calls(gm, target)
    assert len(_calls(gm, ops.dequantize_weight)) == 4


def test_lowered_graph_computes_the_int8_function():
    model = nn.Sequential(nn.Linear(8, 6)).eval()
    x = torch.randn(3, 8)
    qw = numerics.quantize_weight(model[0].weight, QuantConfig().weight_bits, True, True,
                                  pair_safe=True)
    b = model[0].bias.detach()
    gm = lower(model, (x,), QuantConfig(mode="dynamic"))
    expected = reference.linear_dynamic(x, qw.codes, qw.scale, qw.zero_point, b,
                                        QuantConfig().reduce_range)
    assert torch.equal(gm(x), expected)

    gm = lower(model, (x,), QuantConfig(mode="weight_only"))
    qw8 = numerics.quantize_weight(model[0].weight, QuantConfig(mode="weight_only").weight_bits,
                                   True, True)
    assert torch.equal(gm(x), F.linear(x, qw8.dequantize(), b))


def test_skipped_layer_keeps_its_float_weight():
    model = Net().eval()
    gm = lower(model, _ids(), QuantConfig(skip=("fc2",)))
    (fc2,) = [n for n in _calls(gm, F.linear) if n.meta["fxquant"]["source"] == "fc2"]
    assert fc2.args[1].op == "get_attr" and fc2.args[1].target == "fc2.weight"
    assert fc2.args[0].target is torch.relu  # no fake quantization of its input either
    assert "fxq.fc2_w_int8" not in dict(gm.named_buffers())


def test_a_layer_called_twice_keeps_one_int8_weight_and_one_bias():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.fc(x)))

    q = fxquant.quantize(Twice(), (torch.randn(2, 8),))
    added = sorted(k for k in q.state_dict() if k.startswith("fxq."))
    assert added == ["fxq.fc_bias", "fxq.fc_w_int8", "fxq.fc_w_scale", "fxq.fc_w_zp"]
    # two calls, one weight packed once
    calls = [n for n in q.graph.nodes if n.target in PACKED_LINEAR_OPS]
    assert len(calls) == 2 and calls[0].args[1].target == calls[1].args[1].target
    assert sum(n.target is ops.linear_dynamic for n in fxquant.portable(q).graph.nodes) == 2
