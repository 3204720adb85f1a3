"""Small models and helpers shared by the tests of the outlier-aware and low-bit passes
(insert_statistics, smooth_quant, awq, gptq, per-group lowering)."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

import fxquant
from fxquant import QuantConfig, passes


class PreNorm(nn.Module):
    """LayerNorm feeding only two linears (q/k-style), then an MLP; outlier LayerNorm channels."""

    def __init__(self, d: int = 64) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.fc = nn.Linear(d, 2 * d)
        self.out = nn.Linear(2 * d, d)
        with torch.no_grad():
            self.ln.weight[:3] = 25.0  # outlier channels, as transformers' LayerNorms have

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        a = self.q(h) * torch.sigmoid(self.k(h))
        return x + self.out(torch.relu(self.fc(a)))


class PostNorm(nn.Module):
    """BERT-style: the LayerNorm's output feeds a linear *and* the residual."""

    def __init__(self, d: int = 64) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)
        with torch.no_grad():
            self.ln.weight[:3] = 25.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        return h + self.fc(h)


def batches(n: int = 4, d: int = 64, seed: int = 0) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, 16, d, generator=g),) for _ in range(n)]


def run_until(model: nn.Module, config: QuantConfig, last: passes.Pass,
              calibrate: bool = True) -> fx.GraphModule:
    """prepare + calibrate (on ``batches()``), then the CONVERT passes up to and including
    ``last``."""
    data = batches()
    observed = fxquant.prepare(model, data[0], config)
    if calibrate:
        fxquant.calibrate(observed, data[1:])
    upto = passes.CONVERT[: passes.CONVERT.index(last) + 1]
    return passes.run_passes(observed, upto, passes.PassContext(config=config))


def calls(gm: fx.GraphModule, target) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is target]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())
