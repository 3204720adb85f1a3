"""The seed API on LLM layers: GPT-2's ``Conv1D`` (weight ``[in, out]``), embeddings and
convolutions convert to int8 and fake quantization, and a converted GPT-2 still generates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fxquant import numerics, ops
from fxquant.fake_quant import (
    FakeQuantizeConv1D,
    FakeQuantizeConv2d,
    FakeQuantizeEmbedding,
    FakeQuantizeLinear,
    apply_fake_quant_to_model,
)
from fxquant.real_quant import (
    RealQuantizeConv,
    RealQuantizeEmbedding,
    RealQuantizeLinear,
    convert_to_real_quant,
    to_float_model,
)

transformers = pytest.importorskip("transformers", reason="fxquant[hf] extra not installed")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=120,
                                  bos_token_id=0, eos_token_id=0)  # default use_cache
    return transformers.GPT2LMHeadModel(cfg).eval()


def _ids(batch=2, seq=12, seed=0):
    return torch.randint(0, 120, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_conv1d_becomes_the_equivalent_int8_linear():
    conv = transformers.pytorch_utils.Conv1D(6, 10)  # nf=6 outputs, nx=10 inputs
    torch.nn.init.normal_(conv.bias)
    q = convert_to_real_quant(nn.Sequential(conv))[0]
    assert isinstance(q, RealQuantizeLinear) and q.w_int8.shape == (6, 10)
    # The int8 weight is W.t() to within half a step per output channel.
    err = (q.dequantized_weight() - conv.weight.t()).abs()
    assert (err <= q.w_scale[:, None] / 2 + 1e-7).all()
    x = torch.randn(3, 5, 10)
    with torch.no_grad():
        ref, out = conv(x), q(x)
    step = numerics.activation_qparams(x.min().item(), x.max().item(), True)[0]
    bound = 2 * (step * conv.weight.abs().sum(0) + x.abs().sum(-1, keepdim=True).amax()
                 * q.w_scale / 2)
    assert ((out - ref).abs() <= bound).all()


def test_converted_gpt2_generates_like_fp32():
    model = tiny_gpt2()
    q = convert_to_real_quant(model)
    blocks = q.transformer.h
    assert all(isinstance(m, RealQuantizeLinear) for b in blocks
               for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj))
    assert isinstance(q.transformer.wte, RealQuantizeEmbedding)
    assert isinstance(q.lm_head, RealQuantizeLinear)
    assert model.lm_head.weight is model.transformer.wte.weight  # the user's model: untouched
    ids = _ids()
    with torch.no_grad():
        ref, out = model(ids).logits, q(ids).logits
    assert (out - ref).norm() / ref.norm() < 0.05
    prompt = ids[:1, :4]
    want = model.generate(prompt, max_new_tokens=16, do_sample=False)
    got = q.generate(prompt, max_new_tokens=16, do_sample=False)
    assert got.shape == want.shape
    assert (got == want).float().mean() >= 0.8


def test_fake_quant_gpt2_trains_keeps_ties_and_converts_to_what_it_simulated():
    model = tiny_gpt2()
    fq = apply_fake_quant_to_model(model).train()
    assert isinstance(fq.transformer.h[0].attn.c_attn, FakeQuantizeConv1D)
    assert isinstance(fq.transformer.wte, FakeQuantizeEmbedding)
    assert isinstance(fq.lm_head, FakeQuantizeLinear)
    assert fq.lm_head.weight is fq.transformer.wte.weight  # still tied
    assert list(fq.state_dict()) == list(model.state_dict())  # trained weights load back
    ids = _ids(4, 16)
    opt = torch.optim.Adam(fq.parameters(), 1e-3)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = fq(ids, labels=ids).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert fq.transformer.h[0].attn.c_attn.weight.grad.abs().sum() > 0
    fq.eval()
    q = convert_to_real_quant(fq)
    with torch.no_grad():
        sim = fq(ids).logits
        with ops.reference_kernels():
            exact = q(ids).logits
        out = q(ids).logits
    # Same codes and scales: the reference kernels compute the simulation itself.
    assert (exact - sim).norm() / sim.norm() < 1e-5
    # fbgemm's activation rounding can take the neighbouring code where x / scale sits on a
    # rounding boundary (it multiplies by 1 / scale); one flipped 7-bit code propagates.
    assert (out - sim).norm() / sim.norm() < 1e-2
    assert (out.argmax(-1) == sim.argmax(-1)).float().mean() >= 0.98
    back = to_float_model(fq)
    assert type(back.transformer.h[0].attn.c_attn) is transformers.pytorch_utils.Conv1D
    assert type(back.transformer.wte) is nn.Embedding


def test_conv_and_embedding_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    fq = apply_fake_quant_to_model(model, bits=6)
    assert [type(m) for m in fq] == [FakeQuantizeConv2d, nn.ReLU, FakeQuantizeConv2d]
    x = torch.randn(2, 3, 10, 10)
    q = convert_to_real_quant(fq, bits=6)
    assert isinstance(q[0], RealQuantizeConv) and q[0].w_int8.dtype == torch.int8
    with torch.no_grad():
        sim, out = fq(x), q(x)
    torch.testing.assert_close(out, sim, rtol=1e-4, atol=1e-4 * sim.abs().max().item())
    table = nn.Embedding(50, 16)
    qt = convert_to_real_quant(nn.Sequential(table), embedding_bits=8)[0]
    idx = torch.tensor([[1, 7, 49]])
    err = (qt(idx) - table(idx)).abs()
    assert (err <= qt.w_scale[idx].unsqueeze(-1) / 2 + 1e-7).all()
    fq_table = apply_fake_quant_to_model(nn.Sequential(table), embedding_bits=4)[0]
    torch.testing.assert_close(fq_table(idx), F.embedding(idx, numerics.quantize_weight(
        table.weight, 4, True, True).dequantize()))
