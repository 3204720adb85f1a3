"""Hugging Face BERT and GPT-2 (tiny random configs): region-wise capture, every mode."""

from __future__ import annotations

import pytest
import torch

import fxquant
from fxquant import ops
from fxquant.passes.pack_weights import PACKED_LINEAR_OPS, embedding_packed

transformers = pytest.importorskip("transformers", reason="fxquant[hf] extra not installed")
pytestmark = pytest.mark.hf

MODES = ("dynamic", "static", "weight_only")
# fxquant's fused ops, and the fbgemm calls they become once weights are packed
FUSED = {ops.linear_dynamic, ops.linear_static, ops.linear_weight_only, *PACKED_LINEAR_OPS}
# Relative error of the last hidden state / logits against fp32 on these random 2-layer models,
# measured around 0.006 (BERT) and 0.02 (GPT-2): the bounds leave ~3x margin.
BOUND = {"bert": 0.03, "gpt2": 0.08}


def tiny_bert():
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                  intermediate_size=128, vocab_size=120)
    return transformers.BertModel(cfg).eval()


def tiny_gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=120,
                                  bos_token_id=0, eos_token_id=0, use_cache=False)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _nodes(q):
    return [n for m in q.modules() if isinstance(m, torch.fx.GraphModule) for n in m.graph.nodes]


def _ids(batch, seq, seed=0):
    return torch.randint(0, 120, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _calibration(with_mask):
    batches = []
    for i in range(3):
        ids = _ids(2, 12, seed=10 + i)
        batches.append((ids, torch.ones_like(ids)) if with_mask else (ids,))
    return batches


@pytest.mark.parametrize("mode", MODES)
def test_bert_quantizes_and_runs_at_other_shapes(mode):
    model = tiny_bert()
    ids = _ids(1, 8)
    q = fxquant.quantize(model, (ids, torch.ones_like(ids)), calibration=_calibration(True),
                         config=fxquant.QuantConfig(mode=mode))
    assert type(q) is type(model) and fxquant.record_of(q).capture == "regions"
    fused = [n for n in _nodes(q) if n.target in FUSED]
    assert len(fused) == 2 * 6 + 1  # q, k, v, out, intermediate, output per layer + pooler
    assert sum(n.target in (ops.embedding, embedding_packed) for n in _nodes(q)) == 3
    for batch, seq in ((1, 5), (3, 17)):
        x = _ids(batch, seq, seed=batch)
        mask = torch.ones_like(x)
        mask[-1, seq // 2:] = 0
        ref = model(x, mask).last_hidden_state
        out = q(x, mask).last_hidden_state
        assert out.shape == ref.shape
        assert (out - ref).norm() / ref.norm() < BOUND["bert"]


@pytest.mark.parametrize("mode", MODES)
def test_gpt2_conv1d_and_tied_head_quantize(mode):
    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    ids = _ids(1, 8)
    q = fxquant.quantize(model, (ids,), calibration=_calibration(False),
                         config=fxquant.QuantConfig(mode=mode))
    fused = [n for n in _nodes(q) if n.target in FUSED]
    assert len(fused) == 2 * 4 + 1  # c_attn, c_proj, c_fc, mlp c_proj (all Conv1D) + lm_head
    int8 = {k: v for k, v in q.state_dict().items() if v.dtype == torch.int8}
    vocab_tables = {v.data_ptr() for v in int8.values() if v.shape == (120, 64)}
    assert len(vocab_tables) == 1  # wte and lm_head share one int8 table
    assert not any(v.is_floating_point() and v.dim() == 2 and v.numel() >= 64 * 64
                   for v in q.state_dict().values())
    for batch, seq in ((1, 1), (2, 16)):
        x = _ids(batch, seq, seed=seq)
        ref = model(x).logits
        out = q(x).logits
        assert (out - ref).norm() / ref.norm() < BOUND["gpt2"]
        assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9


def test_hf_model_is_not_changed():
    model = tiny_gpt2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    fxquant.quantize(model, (_ids(1, 8),))
    assert model.training
    assert model.lm_head.weight is model.transformer.wte.weight
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.onnx
def test_onnx_export_leaves_the_hf_model_as_it_was(tmp_path):
    # The TorchScript exporter runs the model under tracing; transformers models keep state from
    # such a run (MiniLM's embeddings changed). export_onnx must work on a copy.
    model = tiny_bert()
    ids = _ids(2, 9)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    before = model(ids, mask).last_hidden_state
    q = fxquant.quantize(model, (ids, mask))
    for m in (model, q):
        fxquant.export_onnx(m, tmp_path / "m.onnx", (ids, mask),
                            input_names=["input_ids", "attention_mask"])
    assert torch.equal(model(ids, mask).last_hidden_state, before)
