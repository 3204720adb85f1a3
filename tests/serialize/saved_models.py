"""Models the save/load tests quantize, save and load (imported by the tests and, by file path, by
the fresh loading process)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """A plain model ``torch.fx.symbolic_trace`` captures whole."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, 32)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(32, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc2(self.act(self.fc1(x))))


class Shifted(nn.Module):
    """A plain model quantized region by region whose shell holds a non-persistent buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = MLP()
        self.register_buffer("shift", torch.linspace(-1.0, 1.0, 8), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + self.shift


def tiny_gpt2():
    import transformers

    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=120,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def tiny_llama():
    import transformers

    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=128, vocab_size=120,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


def token_ids(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 120, (batch, length), generator=torch.Generator().manual_seed(seed))
