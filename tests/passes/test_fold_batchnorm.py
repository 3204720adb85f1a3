"""Golden-graph tests for fold_batchnorm: conv -> BatchNorm becomes one conv with folded weights,
in both graph flavours, without touching the user's tensors; and what must not fold stays."""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant import QuantConfig, numerics, passes
from fxquant.graph import fetch_attr

FOLD = (passes.CANONICALIZE, passes.FOLD_BATCHNORM)


def _trained(bn: nn.Module) -> nn.Module:
    """Statistics and affine parameters far from the identity, so a missed fold shows."""
    with torch.no_grad():
        bn.running_mean.uniform_(-1.0, 1.0)
        bn.running_var.uniform_(0.3, 3.0)
        if bn.weight is not None:
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
    return bn


class Net(nn.Module):
    """Module BatchNorms (2-D and 1-D) and a functional one, after convs with and without bias."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = _trained(nn.BatchNorm2d(8))
        self.conv_b = nn.Conv2d(8, 8, 3, stride=2, groups=2)
        self.bn_nohat = _trained(nn.BatchNorm2d(8, affine=False))
        self.conv1d = nn.Conv1d(8, 6, 3, padding=1)
        self.bn1d = _trained(nn.BatchNorm1d(6))
        self.mean = nn.Buffer(torch.linspace(-1, 1, 6))
        self.var = nn.Buffer(torch.linspace(0.5, 2, 6))
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.beta = nn.Parameter(torch.linspace(-0.3, 0.3, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = self.bn_nohat(self.conv_b(x))
        s = self.bn1d(self.conv1d(x.flatten(2)))
        s = F.batch_norm(self.conv1d(x.flatten(2)), self.mean, self.var, self.gamma, self.beta,
                         False, 0.1, 1e-3) + s
        return s


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


def _fold(model: nn.Module, capture: str = "symbolic_trace") -> tuple[fx.GraphModule, object]:
    config = QuantConfig(capture=capture)
    gm = fxquant.capture(model, (_x(),), config)
    ctx = passes.PassContext(config=config, example_inputs=(_x(),))
    gm = passes.run_passes(gm, FOLD, ctx)
    gm.graph.lint()
    return gm, ctx


def _batchnorms(gm: fx.GraphModule) -> list[fx.Node]:
    def is_bn(n: fx.Node) -> bool:
        if n.op == "call_module":
            return isinstance(fetch_attr(gm, n.target), (nn.BatchNorm1d, nn.BatchNorm2d))
        return "batch_norm" in str(n.target)

    return [n for n in gm.graph.nodes if is_bn(n)]


def _convs(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.target in (F.conv1d, F.conv2d)]


def _close_to(model: nn.Module, gm: fx.GraphModule) -> None:
    x = _x(5)
    with torch.no_grad():
        expected, got = model(x), gm(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_symbolic_trace_batchnorms_fold_into_the_convs():
    model = Net().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm, ctx = _fold(model)
    assert _batchnorms(gm) == []
    convs = _convs(gm)
    assert [(c.args[1].target, c.args[2].target) for c in convs] == [
        ("conv.weight_folded", "conv.bias_folded"),
        ("conv_b.weight_folded", "conv_b.bias_folded"),
        ("conv1d.weight_folded", "conv1d.bias_folded"),
        ("conv1d.weight_folded_1", "conv1d.bias_folded_1"),  # the same conv, a second BatchNorm
    ]
    assert [c.meta["fxquant"]["folded_batchnorm"] for c in convs] == [
        "bn", "bn_nohat", "bn1d", "batch_norm"]
    assert [c.target for c in gm.graph.nodes if c.op == "call_function"].count(F.relu) == 1
    assert "fold_batchnorm" not in ctx.refusals
    _close_to(model, gm)
    # New tensors: the user's model is as it was, and no folded tensor aliases one of its own.
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    ptrs = {t.data_ptr() for t in model.state_dict().values()}
    assert fetch_attr(gm, "conv.weight_folded").data_ptr() not in ptrs


def test_export_batchnorm_folds():
    model = Net().eval()
    gm, _ = _fold(model, capture="export")
    assert _batchnorms(gm) == []
    assert len(_convs(gm)) == 4
    _close_to(model, gm)


def test_native_batch_norm_legit_no_training_folds():
    # The decomposed (inference) export spelling: a 3-tuple read through getitem 0.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _trained(nn.BatchNorm2d(4)), nn.ReLU()).eval()
    gm = torch.export.export(model, (_x(),)).run_decompositions({}).module()
    assert any(n.target is torch.ops.aten._native_batch_norm_legit_no_training.default
               for n in gm.graph.nodes)
    ctx = passes.PassContext(config=QuantConfig(), example_inputs=(_x(),))
    gm = passes.run_passes(gm, FOLD, ctx)
    assert _batchnorms(gm) == []
    assert not [n for n in gm.graph.nodes if "getitem" in str(n.target)]
    (conv,) = _convs(gm)
    assert conv.args[1].target.endswith("weight_folded")
    _close_to(model, gm)


def test_the_folded_weight_is_what_gets_quantized():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), _trained(nn.BatchNorm2d(8))).eval()
    qmodel = fxquant.quantize(model, (_x(),))
    codes = qmodel.state_dict()["fxq.0_w_int8"]
    scale = qmodel.state_dict()["fxq.0_w_scale"]
    conv, bn = model
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = conv.weight * factor.reshape(-1, 1, 1, 1)
    deq = numerics.dequantize(codes, scale, torch.zeros_like(codes[:, 0, 0, 0]).int(), axis=0)
    assert bool(((deq - folded).abs() <= 0.5 * scale.reshape(-1, 1, 1, 1) + 1e-7).all())
    bias = qmodel.state_dict()["fxq.0_bias"]
    torch.testing.assert_close(bias, (conv.bias - bn.running_mean) * factor + bn.bias)


class SharedOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = _trained(nn.BatchNorm2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y  # the conv output is used twice: folding would change y


class TiedWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = _trained(nn.BatchNorm2d(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The same weight in two convs; only the first is followed by a BatchNorm.
        return self.bn(self.conv(x)) + F.conv2d(x, self.conv.weight, None, 1, 1)


def test_conv_with_other_users_is_not_folded():
    model = SharedOutput().eval()
    gm, ctx = _fold(model)
    (bn,) = _batchnorms(gm)
    assert ctx.refusals["fold_batchnorm"] == [(bn.name, "conv output has users besides the "
                                               "BatchNorm")]
    assert _convs(gm)[0].args[1].target == "conv.weight"
    _close_to(model, gm)


def test_a_tied_weight_keeps_serving_its_other_conv():
    model = TiedWeight().eval()
    gm, _ = _fold(model)
    assert [c.args[1].target for c in _convs(gm)] == ["conv.weight_folded", "conv.weight"]
    assert fetch_attr(gm, "conv.weight") is model.conv.weight or torch.equal(
        fetch_attr(gm, "conv.weight"), model.conv.weight)
    _close_to(model, gm)


def test_training_mode_and_batch_statistics_are_refused():
    # A training-mode BatchNorm (traced without capture's eval()) and one without running
    # statistics (it always normalises with the batch's own) must stay.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4),
                          nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    model.eval()[1].train()
    gm = fx.symbolic_trace(model)
    ctx = passes.PassContext(config=QuantConfig(), example_inputs=(_x(),))
    gm = passes.run_passes(gm, FOLD, ctx)
    assert sorted(r for _, r in ctx.refusals["fold_batchnorm"]) == [
        "BatchNorm in training mode",
        "BatchNorm without running statistics (it normalises with batch statistics)",
    ]
    assert len(_batchnorms(gm)) == 2


def test_functional_training_batchnorm_is_refused():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.mean = nn.Buffer(torch.zeros(4))
            self.var = nn.Buffer(torch.ones(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.batch_norm(self.conv(x), self.mean, self.var, training=True)

    gm, ctx = _fold(Functional().eval())
    assert [r for _, r in ctx.refusals["fold_batchnorm"]] == ["BatchNorm in training mode"]
    assert len(_batchnorms(gm)) == 1


def test_batchnorm_after_something_else_is_left_alone():
    model = nn.Sequential(nn.Linear(12, 12), nn.BatchNorm1d(3)).eval()
    config = QuantConfig()
    x = torch.randn(2, 3, 12)
    gm = fxquant.capture(model, (x,), config)
    ctx = passes.PassContext(config=config, example_inputs=(x,))
    result = passes.run_fold_batchnorm(passes.run_canonicalize(gm, ctx).graph_module, ctx)
    assert result.modified is False
    assert "fold_batchnorm" not in ctx.refusals
    assert len(_batchnorms(result.graph_module)) == 1
