"""Golden-graph tests for the canonicalize pass: one functional form per quantizable op."""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxquant import QuantConfig, passes
from fxquant.capture import capture
from fxquant.graph import kind_of


class Mixed(nn.Module):
    """Every way a quantizable op can appear: module calls, a functional call on a parameter,
    and modules whose options canonicalize must refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8, padding_idx=0)
        self.emb_norm = nn.Embedding(10, 8, max_norm=1.0)  # refused: max_norm
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.conv_reflect = nn.Conv1d(8, 8, 3, padding=1, padding_mode="reflect")  # refused
        self.conv2d = nn.Conv2d(1, 2, 3, stride=2, bias=False)
        self.fc = nn.Linear(8, 4)
        self.w = nn.Parameter(torch.randn(4, 8))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids) + self.emb_norm(ids)
        x = self.conv_reflect(self.conv(x.transpose(1, 2))).transpose(1, 2)
        img = self.conv2d(x.unsqueeze(1)).sum()
        return self.fc(x) + F.linear(x, self.w) + img


def _canonicalize(model: nn.Module, inputs: tuple, config: QuantConfig | None = None):
    config = config or QuantConfig()
    gm = capture(model, inputs, config)
    ctx = passes.PassContext(config=config, example_inputs=inputs)
    return passes.run_passes(gm, (passes.CANONICALIZE,), ctx), ctx


def _ids() -> tuple[torch.Tensor]:
    return (torch.randint(0, 10, (2, 6)),)


def _nodes(gm: fx.GraphModule, target) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is target]


def test_module_calls_become_functional_calls_on_get_attr():
    model = Mixed().eval()
    gm, _ = _canonicalize(model, _ids())
    gm.graph.lint()

    linears = _nodes(gm, F.linear)
    assert len(linears) == 2
    assert len(_nodes(gm, F.conv1d)) == 1
    assert len(_nodes(gm, F.conv2d)) == 1
    assert len(_nodes(gm, F.embedding)) == 1
    # Only the refused modules are still module calls.
    assert sorted(n.target for n in gm.graph.nodes if n.op == "call_module") == [
        "conv_reflect",
        "emb_norm",
    ]
    # Weight (argument 1) and bias are get_attr nodes of the original parameters.
    for node in gm.graph.nodes:
        if kind_of(node):
            assert node.args[1].op == "get_attr"
    fc = next(n for n in linears if n.meta["fxquant"]["source"] == "fc")
    assert [a.target for a in fc.args[1:]] == ["fc.weight", "fc.bias"]
    conv2d = _nodes(gm, F.conv2d)[0]
    assert conv2d.args[2] is None  # no bias stays no bias
    assert conv2d.args[3:] == ((2, 2), (0, 0), (1, 1), 1)
    emb = _nodes(gm, F.embedding)[0]
    assert emb.args[1].target == "emb.weight" and emb.args[2] == 0  # padding_idx kept

    with torch.no_grad():
        ids = torch.randint(0, 10, (3, 5))
        assert torch.equal(gm(ids), model(ids))


def test_source_names_the_module_or_parameter():
    gm, _ = _canonicalize(Mixed().eval(), _ids())
    sources = sorted(n.meta["fxquant"]["source"] for n in gm.graph.nodes if kind_of(n))
    assert sources == ["conv", "conv2d", "emb", "fc", "w"]


def test_unsupported_options_are_refused_with_a_reason():
    _, ctx = _canonicalize(Mixed().eval(), _ids())
    assert sorted(ctx.refusals["canonicalize"]) == [
        ("conv_reflect", "Conv1d options not supported"),
        ("emb_norm", "Embedding options not supported"),
    ]


class OnlyRefused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4, max_norm=1.0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb(ids)


def test_refusal_leaves_the_graph_untouched():
    config = QuantConfig()
    gm = capture(OnlyRefused().eval(), _ids(), config)
    before = gm.code
    result = passes.run_canonicalize(gm, passes.PassContext(config=config))
    gm.recompile()
    assert result.modified is False
    assert gm.code == before
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "output"]


class KeywordWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight=self.w)


def test_functional_linear_with_keyword_weight_is_left_alone():
    x = torch.randn(2, 8)
    model = KeywordWeight().eval()
    gm, _ = _canonicalize(model, (x,))
    gm.graph.lint()
    (linear,) = _nodes(gm, F.linear)
    assert "source" not in linear.meta.get("fxquant", {})
    assert torch.equal(gm(x), model(x))


def test_canonicalize_is_idempotent():
    gm, ctx = _canonicalize(Mixed().eval(), _ids())
    before = gm.code
    result = passes.run_canonicalize(gm, ctx)
    gm.recompile()
    assert result.modified is False
    assert gm.code == before
