"""Quantized Hugging Face models stay the user's model: GPT-2, Llama, Qwen2 (causal LMs with their
default configs: ``use_cache=True``), BERT and ViT, region-wise.

Models are small (2 layers, hidden 64) but built from each family's default config otherwise. On
random weights logits are nearly flat, so greedy tokens can flip on near-ties; the bounds below
were measured (token agreement 0.83-1.0, logits cosine > 0.999) and leave margin.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fxquant
from fxquant import QuantConfig
from tests.causal_lms import CAUSAL, VOCAB, gpt2, llama

transformers = pytest.importorskip("transformers", reason="fxquant[hf] extra not installed")
pytestmark = pytest.mark.hf


def _ids(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _tokenized(batch: int = 2, seq: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """What a tokenizer returns for a left-padded batch (padding token 0)."""
    ids = _ids(batch, seq, seed)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    ids[0, :3] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def _quantize(model, mode="dynamic", **kwargs):
    example = transformers.BatchEncoding(_tokenized())
    calibration = [_tokenized(2, 9, seed=s) for s in range(3)] if mode == "static" else None
    return fxquant.quantize(model, example, calibration=calibration,
                            config=QuantConfig(mode=mode), progress=False, **kwargs)


@pytest.fixture(scope="module", params=sorted(CAUSAL))
def pair(request):
    torch.manual_seed(0)
    model = CAUSAL[request.param]()
    return model, _quantize(model)


def test_the_quantized_model_is_the_users_class_with_its_config(pair):
    model, q = pair
    assert type(q) is type(model)
    assert q.config.to_dict() == model.config.to_dict() and q.config is not model.config
    assert q.device == torch.device("cpu") and not q.training
    record = fxquant.record_of(q)
    assert record.capture == "regions" and record.stage == "converted"
    linears = sum(isinstance(m, (torch.nn.Linear, transformers.pytorch_utils.Conv1D))
                  for m in model.modules())
    assert sum(layer.kind == "linear" for layer in record.quantized_layers) == linears
    assert not record.float_layers and not record.float_modules
    assert "int8" in record.table()


def test_keyword_and_tokenizer_calls_return_the_same_output_types(pair):
    model, q = pair
    batch = transformers.BatchEncoding(_tokenized(seed=5))
    with torch.no_grad():
        ref = model(**batch)
        out = q(**batch)
        positional = q(batch["input_ids"])
    assert type(out) is type(ref)
    assert out.logits.shape == ref.logits.shape == positional.logits.shape
    real = batch["attention_mask"].bool()
    assert _cosine(out.logits[real], ref.logits[real]) > 0.995


def test_labels_give_a_loss_close_to_fp32(pair):
    model, q = pair
    ids = _ids(2, 8, seed=3)
    with torch.no_grad():
        ref, out = model(input_ids=ids, labels=ids).loss, q(input_ids=ids, labels=ids).loss
    assert abs(float(out) - float(ref)) < 0.02 * float(ref)


def test_a_decode_step_with_the_cache_matches_the_full_forward(pair):
    _, q = pair
    ids = _ids(1, 9, seed=4)
    with torch.no_grad():
        prefill = q(input_ids=ids[:, :-1], use_cache=True)
        step = q(input_ids=ids[:, -1:], past_key_values=prefill.past_key_values, use_cache=True)
        full = q(input_ids=ids)
    assert step.logits.shape == (1, 1, VOCAB)
    assert _cosine(step.logits[0, -1], full.logits[0, -1]) > 0.999


def _generate(model, **kwargs):
    with torch.no_grad():
        return model.generate(max_new_tokens=12, do_sample=False, pad_token_id=0, **kwargs)


def test_greedy_generate_agrees_with_fp32(pair):
    model, q = pair
    ids = _ids(1, 6, seed=7)
    ref, out = _generate(model, input_ids=ids), _generate(q, input_ids=ids)
    assert out.shape == ref.shape
    assert (out == ref).float().mean() >= 0.8
    with torch.no_grad():
        assert _cosine(q(out).logits, model(out).logits) > 0.995


def test_batched_left_padded_generate_uses_the_kv_cache(pair):
    model, q = pair
    batch = _tokenized(seed=8)
    seen: list[int] = []
    head = q.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        out = _generate(q, **batch)
    finally:
        handle.remove()
    ref = _generate(model, **batch)
    new = out[:, batch["input_ids"].shape[1]:]
    assert new.shape == (2, 12)
    assert (out == ref).float().mean() >= 0.75
    # HF computes logits for the last position only; after the prefill every step feeds the head
    # one position: the prompt is never recomputed.
    assert len(seen) == 12 and all(n == 1 for n in seen[1:])


def test_sampling_runs_and_is_reproducible(pair):
    _, q = pair
    ids = _ids(2, 5, seed=9)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        with torch.no_grad():
            runs.append(q.generate(input_ids=ids, do_sample=True, top_k=20, max_new_tokens=8,
                                   pad_token_id=0))
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape == (2, 13) and int(runs[0].max()) < VOCAB


@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_static_mode_calibrates_from_tokenizer_dicts(name):
    torch.manual_seed(0)
    model = CAUSAL[name]()
    q = _quantize(model, mode="static")
    assert fxquant.record_of(q).calibration_batches == 3
    batch = _tokenized(seed=11)
    with torch.no_grad():
        out, ref = q(**batch).logits, model(**batch).logits
    real = batch["attention_mask"].bool()
    assert _cosine(out[real], ref[real]) > 0.99
    assert _generate(q, input_ids=_ids(1, 4)).shape == (1, 16)


@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_the_users_model_is_untouched(name):
    torch.manual_seed(0)
    model = CAUSAL[name]().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {k: id(p) for k, p in model.named_parameters()}
    q = _quantize(model)
    assert model.training
    assert {k: id(p) for k, p in model.named_parameters()} == params
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # and the quantized model shares no storage with it
    theirs = {p.data_ptr() for p in model.parameters()}
    assert not theirs & {t.data_ptr() for t in q.state_dict().values()}


def test_gpt2_keeps_one_int8_table_for_wte_and_lm_head():
    q = _quantize(gpt2())
    assert q.transformer.wte.fxq.weight_w_int8 is q.lm_head.fxq.weight_w_int8
    assert fxquant.record_of(q).tied
    # model code reading a layer's weight still finds one (float32, its own layout)
    assert q.lm_head.weight.dtype == torch.float32 and q.lm_head.weight.shape == (VOCAB, 64)
    assert q.transformer.h[0].attn.c_attn.weight.shape == (64, 192)  # Conv1D keeps [in, out]


def test_bert_and_vit_quantize_region_wise():
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
        vocab_size=VOCAB)).eval()
    batch = _tokenized()
    qb = fxquant.quantize(bert, dict(batch), progress=False)
    with torch.no_grad():
        out, ref = qb(**batch), bert(**batch)
    real = batch["attention_mask"].bool()
    assert type(out) is type(ref)
    assert _cosine(out.last_hidden_state[real], ref.last_hidden_state[real]) > 0.99

    vit = transformers.ViTModel(transformers.ViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        image_size=32, patch_size=8)).eval()
    pixels = torch.randn(2, 3, 32, 32)
    qv = fxquant.quantize(vit, (pixels,), progress=False)
    names = [r.name for r in fxquant.record_of(qv).regions]
    assert "embeddings.patch_embeddings.projection" in names
    with torch.no_grad():
        assert _cosine(qv(pixels).pooler_output, vit(pixels).pooler_output) > 0.99


def test_misspelt_input_key_is_refused_naming_it():
    with pytest.raises(fxquant.ExampleInputError, match="'atention_mask'"):
        fxquant.quantize(llama(), {"input_ids": _ids(1, 4), "atention_mask": _ids(1, 4)})


def test_calibration_batch_of_another_form_is_refused():
    with pytest.raises(fxquant.CalibrationError, match="batch 1"):
        fxquant.quantize(gpt2(), _tokenized(), calibration=[_tokenized(), (_ids(2, 7),)],
                         config=QuantConfig(mode="static"))


def test_record_lists_regions_and_timings():
    q = _quantize(llama())
    record = fxquant.record_of(q)
    names = [r.name for r in record.regions]
    assert "model.layers.0.mlp" in names  # the MLP traces whole: one region
    assert "model.layers.0.self_attn.q_proj" in names  # attention takes the cache: per layer
    assert {"capture", "prepare", "convert", "total"} <= set(record.timings)
    as_dict = record.to_dict()
    # embeddings + 2 x (4 + 3) + lm_head
    assert as_dict["config"]["mode"] == "dynamic" and len(as_dict["layers"]) == 16
