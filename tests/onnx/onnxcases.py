"""The models, modes and inputs the ONNX tests share (small, so the suite stays fast)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tests.models import (
    BertEncoder,
    DecoderConfig,
    EncoderConfig,
    GPT2Decoder,
    SmallConvNet,
    make_inputs,
    seed_mlp,
)

MODES = ("dynamic", "static", "weight_only")
ENC = EncoderConfig(n_layer=2, d_model=64, n_head=4, d_mlp=256, vocab=100, max_pos=64)
DEC = DecoderConfig(n_layer=2, d_model=64, n_head=4, d_mlp=256, vocab=100, n_ctx=64)


@dataclass(frozen=True)
class Case:
    """A model and a way to make its inputs at any batch size."""

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int, int], tuple[torch.Tensor, ...]]  # (batch, seed) -> inputs


CASES = {
    "mlp": Case("mlp", seed_mlp, lambda b, s: make_inputs("mlp", b, seed=s)),
    "convnet": Case("convnet", lambda: SmallConvNet(8),
                    lambda b, s: make_inputs("convnet", b, image_size=8, seed=s)),
    "bert": Case("bert", lambda: BertEncoder(ENC, seed=0),
                 lambda b, s: make_inputs("bert", b, 8, cfg=ENC, pad=2 if b > 1 else 0, seed=s)),
    "gpt2": Case("gpt2", lambda: GPT2Decoder(DEC, seed=0),
                 lambda b, s: make_inputs("gpt2", b, 8, cfg=DEC, seed=s)),
}


@dataclass(frozen=True)
class Exported:
    case: Case
    mode: str
    float_model: nn.Module
    qmodel: torch.fx.GraphModule
    path: Path
    result: Any  # fxquant.onnx_export.ExportResult


def calibration(case: Case) -> list[tuple[torch.Tensor, ...]]:
    # Wide enough that batch-1 and batch-7 test inputs stay mostly inside the calibrated ranges.
    return [case.inputs(8, seed) for seed in range(100, 104)]
