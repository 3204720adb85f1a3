"""Plain-PyTorch models the tests quantize; the benchmarks (bench_core, bench_onnx, bench_runtime)
measure the same ones.

Every model here is traceable with ``torch.fx.symbolic_trace``: there is no
Python control flow on tensor values, and shapes that depend on the input
(batch size, sequence length) only flow through torch ops (``x.size(1)`` ->
``torch.arange``, ``unflatten``/``flatten``/``transpose`` instead of
``view(B, T, ...)`` with Python ints), so one trace is valid for any batch
size and sequence length.

Models:
    seed_mlp()               784 -> 512 -> 10 MLP
    GPT2Decoder(cfg)         GPT-2 (124M-shaped by default) decoder, tied lm_head
    BertEncoder(cfg)         BERT-base-shaped post-LN encoder
    SmallConvNet(...)        tiny conv net for tests (28x28 or 8x8 inputs)

Helper:
    make_inputs(kind, batch, seq, ...)  -> tuple of example inputs
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "MODEL_KINDS",
    "BertEncoder",
    "DecoderConfig",
    "EncoderConfig",
    "GPT2Decoder",
    "SmallConvNet",
    "make_inputs",
    "seed_mlp",
]


# --------------------------------------------------------------------------
# MLP
# --------------------------------------------------------------------------


def seed_mlp() -> nn.Sequential:
    """``Linear(784, 512) -> ReLU -> Linear(512, 10)`` (default PyTorch init)."""
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10))


# --------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------


def _split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """[B, T, D] -> [B, H, T, D/H] without reading B or T as Python ints."""
    return x.unflatten(-1, (n_head, -1)).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, Dh] -> [B, T, H*Dh]."""
    return x.transpose(1, 2).flatten(2)


def _init_gpt_style(module: nn.Module, generator: torch.Generator, std: float = 0.02) -> None:
    """Normal(0, std) for Linear / Embedding weights, zero biases, LayerNorm = (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=std, generator=generator)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------
# GPT-2 decoder
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DecoderConfig:
    """GPT-2 style config; defaults are GPT-2 small (124M)."""

    n_layer: int = 12
    d_model: int = 768
    n_head: int = 12
    d_mlp: int = 3072
    vocab: int = 50257
    n_ctx: int = 1024
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.d_model % self.n_head != 0:
            raise ValueError(f"d_model={self.d_model} not divisible by n_head={self.n_head}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_head = cfg.n_head
        self.d_model = d
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        parts = qkv.split(self.d_model, dim=-1)
        q = _split_heads(parts[0], self.n_head)
        k = _split_heads(parts[1], self.n_head)
        v = _split_heads(parts[2], self.n_head)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(_merge_heads(y))


class DecoderMLP(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.act = nn.GELU(approximate="tanh")
        self.proj = nn.Linear(cfg.d_mlp, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class DecoderBlock(nn.Module):
    """Pre-LN GPT-2 block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.mlp = DecoderMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT2Decoder(nn.Module):
    """GPT-2 decoder. ``forward(input_ids [B, T] long) -> logits [B, T, vocab]``.

    ``lm_head`` is ``F.linear(h, self.wte.weight)``: the output projection is the
    token-embedding tensor itself (weight tying, no bias), as in GPT-2.
    No dropout (inference model). T must be <= cfg.n_ctx.
    """

    def __init__(self, cfg: DecoderConfig = DecoderConfig(), seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):  # don't disturb the global RNG
            self.wte = nn.Embedding(cfg.vocab, cfg.d_model)
            self.wpe = nn.Embedding(cfg.n_ctx, cfg.d_model)
            self.h = nn.ModuleList([DecoderBlock(cfg) for _ in range(cfg.n_layer)])
            self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            _init_gpt_style(self, g, std=0.02)
            # GPT-2: residual output projections scaled by 1/sqrt(2 * n_layer).
            resid_std = 0.02 / math.sqrt(2 * cfg.n_layer)
            for blk in self.h:
                nn.init.normal_(blk.attn.proj.weight, mean=0.0, std=resid_std, generator=g)
                nn.init.normal_(blk.mlp.proj.weight, mean=0.0, std=resid_std, generator=g)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.size(1), device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)
        for blk in self.h:
            x = blk(x)
        x = self.ln_f(x)
        return F.linear(x, self.wte.weight)


# --------------------------------------------------------------------------
# BERT encoder
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderConfig:
    """BERT style config; defaults are BERT-base."""

    n_layer: int = 12
    d_model: int = 768
    n_head: int = 12
    d_mlp: int = 3072
    vocab: int = 30522
    max_pos: int = 512
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        if self.d_model % self.n_head != 0:
            raise ValueError(f"d_model={self.d_model} not divisible by n_head={self.n_head}")


# Additive value for masked-out keys (original BERT). A finite constant keeps
# the mask add quantization-friendly and avoids -inf/NaN paths.
MASK_VALUE = -10000.0


class EncoderSelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_head = cfg.n_head
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        q = _split_heads(self.q(x), self.n_head)
        k = _split_heads(self.k(x), self.n_head)
        v = _split_heads(self.v(x), self.n_head)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        return self.out(_merge_heads(y))


class EncoderBlock(nn.Module):
    """Post-LN BERT block: ln_1(x + attn(x)); ln_2(x + mlp(x))."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.attn = EncoderSelfAttention(cfg)
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.fc = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.act = nn.GELU()
        self.proj = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        x = self.ln_1(x + self.attn(x, attn_bias))
        x = self.ln_2(x + self.proj(self.act(self.fc(x))))
        return x


class BertEncoder(nn.Module):
    """BERT-base-shaped encoder.

    ``forward(input_ids [B, T] long, attention_mask [B, T] (1 = keep, 0 = pad))
    -> last hidden state [B, T, d_model]``. The mask is applied as an additive
    bias ``(1 - mask) * MASK_VALUE`` of shape [B, 1, 1, T] on the attention scores.
    No token-type embeddings, no pooler, no dropout.
    """

    def __init__(self, cfg: EncoderConfig = EncoderConfig(), seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):
            self.word_embeddings = nn.Embedding(cfg.vocab, cfg.d_model)
            self.position_embeddings = nn.Embedding(cfg.max_pos, cfg.d_model)
            self.emb_ln = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
            self.layers = nn.ModuleList([EncoderBlock(cfg) for _ in range(cfg.n_layer)])
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            _init_gpt_style(self, g, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.size(1), device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos)
        x = self.emb_ln(x)
        keep = attention_mask[:, None, None, :].to(x.dtype)
        attn_bias = (1.0 - keep) * MASK_VALUE
        for layer in self.layers:
            x = layer(x, attn_bias)
        return x


# --------------------------------------------------------------------------
# Small conv net
# --------------------------------------------------------------------------


class SmallConvNet(nn.Module):
    """Conv(in,8,3) ReLU Conv(8,16,3,stride=2) ReLU flatten Linear(num_classes).

    ``image_size`` is the square input side: 28 (MNIST, 1x28x28) or 8 (sklearn
    digits, 1x8x8); anything >= 5 works.
    """

    def __init__(self, image_size: int = 28, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        if image_size < 5:
            raise ValueError(f"image_size must be >= 5, got {image_size}")
        self.image_size = image_size
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, 8, 3)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2)
        self.relu2 = nn.ReLU()
        s1 = image_size - 2
        s2 = (s1 - 3) // 2 + 1
        self.fc = nn.Linear(16 * s2 * s2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.conv2(x))
        x = torch.flatten(x, 1)
        return self.fc(x)


# --------------------------------------------------------------------------
# Example inputs
# --------------------------------------------------------------------------

MODEL_KINDS = ("mlp", "gpt2", "bert", "convnet")


def make_inputs(
    kind: str,
    batch: int = 1,
    seq: int = 128,
    *,
    cfg: object | None = None,
    image_size: int = 28,
    in_channels: int = 1,
    seed: int = 0,
    pad: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Example-input tuple for ``model(*inputs)``; deterministic in ``seed``.

    kind:
      "mlp"     -> (x [batch, 784] float,)                      (seq ignored)
      "gpt2"    -> (input_ids [batch, seq] long,)               ids < cfg.vocab
      "bert"    -> (input_ids [batch, seq] long, attention_mask [batch, seq] long)
                   the last ``pad`` positions of every row after the first are
                   padding (mask 0); row 0 is never padded.
      "convnet" -> (x [batch, in_channels, image_size, image_size] float,)  (seq ignored)
    ``cfg`` defaults to DecoderConfig() / EncoderConfig() (only the vocab is used).
    """
    g = torch.Generator().manual_seed(seed)
    if kind == "mlp":
        return (torch.randn(batch, 784, generator=g),)
    if kind == "convnet":
        return (torch.randn(batch, in_channels, image_size, image_size, generator=g),)
    if kind == "gpt2":
        vocab = (cfg or DecoderConfig()).vocab  # type: ignore[union-attr]
        return (torch.randint(0, vocab, (batch, seq), generator=g),)
    if kind == "bert":
        vocab = (cfg or EncoderConfig()).vocab  # type: ignore[union-attr]
        ids = torch.randint(0, vocab, (batch, seq), generator=g)
        mask = torch.ones(batch, seq, dtype=torch.long)
        if pad > 0:
            if pad >= seq:
                raise ValueError(f"pad={pad} must be < seq={seq}")
            mask[1:, seq - pad :] = 0
        return (ids, mask)
    raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS}")
