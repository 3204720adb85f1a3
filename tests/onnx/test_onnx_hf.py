"""Hugging Face BERT and GPT-2 (tiny random configs, captured by torch.export): the file keeps
batch and sequence length dynamic and matches the model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import fxquant

transformers = pytest.importorskip("transformers", reason="fxquant[hf] extra not installed")
pytestmark = [pytest.mark.onnx, pytest.mark.hf]


def _ids(batch: int, seq: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 120, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _bert():
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                  intermediate_size=128, vocab_size=120)
    return transformers.BertModel(cfg).eval(), ("last_hidden_state", "pooler_output")


def _gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=120,
                                  bos_token_id=0, eos_token_id=0, use_cache=False)
    return transformers.GPT2LMHeadModel(cfg).eval(), ("logits",)


@pytest.mark.parametrize("mode", ["dynamic", "static", "weight_only"])
@pytest.mark.parametrize("build", [_bert, _gpt2])
def test_hf_model_exports_with_dynamic_batch_and_sequence(tmp_path, build, mode):
    torch.manual_seed(0)
    model, outputs = build()
    with_mask = "pooler_output" in outputs
    example = (_ids(2, 8, 0), torch.ones(2, 8, dtype=torch.long)) if with_mask else (_ids(2, 8, 0),)
    names = ("input_ids", "attention_mask")[: len(example)]
    q = fxquant.quantize(model, example, calibration=[example],
                         config=fxquant.QuantConfig(mode=mode))
    axes = {n: {1: "seq"} for n in (*names, outputs[0])}
    result = fxquant.export_onnx(q, tmp_path / "hf.onnx", example, dynamic_axes=axes,
                                 validate=True)
    assert result.output_names == outputs and result.validation.passed
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for batch, seq in ((1, 8), (7, 5)):
        x = (_ids(batch, seq, batch), torch.ones(batch, seq, dtype=torch.long))[: len(names)]
        got = session.run(None, {n: t.numpy() for n, t in zip(names, x, strict=True)})[0]
        with torch.no_grad():
            ref = q(*x)[0].numpy()
        assert got.shape == ref.shape == (batch, seq, ref.shape[-1])
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 5e-2
