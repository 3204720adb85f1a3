"""QAT of a Hugging Face GPT-2 (tiny config) region by region: trains with ``labels=``, every
region's weights get gradients, the user's model is untouched, the int8 model generates."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx

import fxquant
from fxquant import QuantConfig
from fxquant.fake_quantizers import WeightFakeQuant
from fxquant.qat import distillation_loss

transformers = pytest.importorskip("transformers", reason="fxquant[hf] extra not installed")
pytestmark = [pytest.mark.hf, pytest.mark.filterwarnings("ignore::UserWarning")]


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=120,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _tokens(batch=4, seq=16):
    return (torch.arange(seq).repeat(batch, 1) * 7 + torch.arange(batch)[:, None]) % 120


@pytest.fixture(scope="module")
def trained():
    model = tiny_gpt2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = _tokens()
    qat = fxquant.prepare_qat(model, {"input_ids": ids}, config=QuantConfig(weight_bits=4),
                              learnable_scales=True)
    opt = torch.optim.Adam(qat.parameters(), 2e-3)
    losses, grads = [], None
    for step in range(12):
        opt.zero_grad()
        loss = qat(input_ids=ids, labels=ids).loss
        loss.backward()
        if step == 0:
            grads = {id(p): p.grad.clone() if p.grad is not None else None
                     for p in qat.parameters()}
        opt.step()
        losses.append(loss.item())
    return model, before, qat, losses, grads


def test_the_shell_trains_with_labels(trained):
    model, _, qat, losses, _ = trained
    assert type(qat) is type(model) and fxquant.record_of(qat).stage == "qat"
    assert losses[-1] < 0.8 * losses[0]


def test_gradients_reach_every_region_weight(trained):
    _, _, qat, _, grads = trained
    record = fxquant.record_of(qat)
    assert len(record.regions) == 9  # wte, wpe, 2 x (c_attn, c_proj, mlp), lm_head
    for region in record.regions:
        gm = qat.get_submodule(region.name)
        assert isinstance(gm, fx.GraphModule)
        quantized = [gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module"
                     and isinstance(gm.get_submodule(n.target), WeightFakeQuant)]
        assert quantized, region.name
        weights = [(n, p) for n, p in gm.named_parameters() if p.dim() == 2 and "fxq" not in n]
        assert weights, region.name
        for name, p in weights:
            assert grads[id(p)] is not None and grads[id(p)].abs().sum() > 0, (region.name, name)
        for fq in quantized:  # learned scales train too
            assert fq.scale is not None and grads[id(fq.scale)] is not None


def test_the_user_model_is_unchanged(trained):
    model, before, qat, _, _ = trained
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not {id(p) for p in qat.parameters()} & {id(p) for p in model.parameters()}
    # Tied weights stay tied in the QAT model, with one quantizer (one learned scale).
    assert qat.lm_head.weight is qat.transformer.wte.weight
    assert qat.lm_head.fxq.weight_w_obs is qat.transformer.wte.fxq.weight_w_obs


def test_convert_predicts_and_generates_what_qat_did(trained):
    _, _, qat, _, _ = trained
    qat.eval()
    int8 = fxquant.convert(qat)
    assert type(int8) is type(qat) and fxquant.record_of(int8).stage == "converted"
    assert len(fxquant.record_of(int8).tied) == 1  # wte and lm_head: one int8 table
    ids = _tokens(2, 10)
    with torch.no_grad():
        sim, out = qat(ids).logits, int8(ids).logits
    assert (out.argmax(-1) == sim.argmax(-1)).float().mean() == 1.0
    assert (out - sim).norm() / sim.norm() < 1e-4
    prompt = ids[:1, :4]
    want = qat.generate(prompt, max_new_tokens=8, do_sample=False)
    got = int8.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(got, want)
    qat.train()


def test_distillation_step_from_the_float_teacher():
    teacher = tiny_gpt2()
    ids = _tokens()
    student = fxquant.prepare_qat(teacher, {"input_ids": ids}, config=QuantConfig(weight_bits=2))
    opt = torch.optim.Adam(student.parameters(), 2e-3)
    with torch.no_grad():
        target = teacher(ids).logits
    losses = []
    for _ in range(6):
        opt.zero_grad()
        logits = student(input_ids=ids).logits
        loss = distillation_loss(logits[:, :-1], target[:, :-1], 2.0, labels=ids[:, 1:])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
