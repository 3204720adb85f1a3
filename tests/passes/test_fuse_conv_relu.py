"""Golden-graph tests for fuse_conv_relu: a ReLU that is its int8 conv's only user moves into the
conv op, in every spelling; a conv with other users keeps its ReLU apart, with a reason."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant import QuantConfig, ops, passes


class Spellings(nn.Module):
    """One conv per ReLU spelling, and one conv whose output is also used elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(7))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.convs
        x = F.relu(c[0](x))
        x = torch.relu(c[1](x))
        x = c[2](x).relu()
        x = self.act(c[3](x))
        x = F.relu(c[4](x), inplace=True)
        x = torch.relu_(c[5](x))
        y = c[6](x)
        return torch.relu(y) + y  # the ReLU is not the conv's only user: not fused


class Relu6(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.conv(x))  # not a plain ReLU: stays


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 4, 9, 9, generator=torch.Generator().manual_seed(seed))


def _run(model: nn.Module, config: QuantConfig, last) -> tuple[fx.GraphModule, passes.PassContext]:
    gm = fxquant.capture(model, (_x(),), config)
    ctx = passes.PassContext(config=config, example_inputs=(_x(),),
                             calibration=[(_x(s),) for s in range(1, 3)])
    gm = passes.run_passes(gm, passes.PIPELINE[: passes.PIPELINE.index(last) + 1], ctx)
    gm.graph.lint()
    return gm, ctx


def _convs(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.target in ops.FUSED_CONV_OPS]


def _relus(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes
            if n.op != "placeholder" and ("relu" in str(n.target) or n.target == "act")]


@pytest.mark.parametrize("mode", ["dynamic", "static"])
@pytest.mark.parametrize("capture", ["symbolic_trace", "export"])
def test_every_relu_spelling_fuses(mode, capture):
    config = QuantConfig(mode=mode, capture=capture)
    model = Spellings().eval()
    unfused, _ = _run(model, config, passes.FUSE_DEQUANT_MATMUL)
    fused, ctx = _run(model, config, passes.FUSE_CONV_RELU)
    assert [n.args[-1] for n in _convs(unfused)] == [False] * 7
    assert [n.args[-1] for n in _convs(fused)] == [True] * 6 + [False]
    (left,) = _relus(fused)  # the ReLU of the conv with two users
    assert left.args[0] is _convs(fused)[-1]
    assert ctx.refusals["fuse_conv_relu"] == [(_convs(fused)[-1].name,
                                               "conv output has users besides the ReLU")]
    x = _x(7)
    with torch.no_grad():
        expected, got = unfused(x), fused(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_other_activations_and_weight_only_convs_are_left_alone():
    gm, ctx = _run(Relu6().eval(), QuantConfig(), passes.FUSE_CONV_RELU)
    (conv,) = _convs(gm)
    assert conv.args[-1] is False and "fuse_conv_relu" not in ctx.refusals
    gm, _ = _run(Spellings().eval(), QuantConfig(mode="weight_only"), passes.FUSE_CONV_RELU)
    assert _convs(gm) == [] and len(_relus(gm)) == 7


def test_nothing_left_to_fuse_reports_unmodified():
    gm, ctx = _run(Spellings().eval(), QuantConfig(), passes.FUSE_CONV_RELU)
    assert passes.run_fuse_conv_relu(gm, ctx).modified is False
