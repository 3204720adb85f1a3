"""quantize_to_target: the fewest, most sensitive layers are kept in float until the quantized
model meets the accuracy target; the record says what was kept and why."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxquant
from fxquant import AccuracyTarget, QuantConfig
from fxquant.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def one_sensitive_layer() -> nn.Sequential:
    """Four linears; hidden unit 0 after the first is always 0 (ReLU of a very negative bias), and
    layer ``2`` has a huge weight on exactly that unit: its 4-bit grid wastes itself on a weight
    that never matters, so every other weight of layer 2 rounds coarsely."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))
    with torch.no_grad():
        model[0].weight[0] = 0.0
        model[0].bias[0] = -100.0
        model[2].weight[:, 0] = 40.0
    return model.eval()


def _batches(n=3):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 16, generator=g),) for _ in range(n)]


def test_the_one_sensitive_layer_is_the_one_kept():
    model = one_sensitive_layer()
    batches = _batches()
    target = AccuracyTarget("cosine", 0.995)
    result = fxquant.quantize_to_target(model, batches[0], target, batches=batches,
                                        config=QuantConfig(weight_bits=4))
    assert result.trials[0][0] == 0 and not target.met(result.trials[0][1])
    assert result.met and [k.name for k in result.kept] == ["2"]
    assert result.kept[0].rank == 1
    assert max(result.sensitivities, key=result.sensitivities.get) == "2"
    assert result.config.skip == ("2",)
    record = fxquant.record_of(result.model)
    (kept,) = [layer for layer in record.layers if not layer.quantized]
    assert kept.name == "2" and "kept in float by quantize_to_target" in kept.reason
    assert {layer.name for layer in record.quantized_layers} == {"0", "4", "6"}
    # The target holds on the data it was measured on, as scored.
    with torch.no_grad():
        out = [result.model(*b) for b in batches]
        ref = [model(*b) for b in batches]
    assert target.score(out, ref) == pytest.approx(result.score)
    assert "2" in result.table()


def test_kept_layers_can_take_more_bits_instead_of_float():
    model = one_sensitive_layer()
    with torch.no_grad():
        model[2].weight[:, 0] = 2.0  # coarse on a 4-bit grid, fine on an 8-bit one
    batches = _batches()
    target = AccuracyTarget("cosine", 0.995)  # all 4-bit: 0.978; layer 2 at 8 bits: 0.998
    result = fxquant.quantize_to_target(model, batches[0], target, batches=batches,
                                        config=QuantConfig(weight_bits=4), keep=8)
    assert result.met and [k.name for k in result.kept] == ["2"]
    assert result.config.layer_bits == (("2", 8),) and not result.config.skip
    schemes = {layer.name: layer.scheme for layer in fxquant.record_of(result.model).layers}
    assert schemes["2"].startswith("w8") and schemes["0"].startswith("w4")
    assert "at 8 bits" in result.table()
    with pytest.raises(ConfigError, match="keep"):
        fxquant.quantize_to_target(model, batches[0], target, batches=batches, keep=9)


def test_nothing_is_kept_when_the_target_is_already_met():
    model = one_sensitive_layer()
    with torch.no_grad():
        model[2].weight[:, 0] = 0.1  # no outlier: 8-bit weights are fine everywhere
    batches = _batches(2)
    result = fxquant.quantize_to_target(model, batches[0], AccuracyTarget("top1_agreement", 0.5),
                                        batches=batches)
    assert result.met and not result.kept and result.trials == [(0, result.score)]


def test_an_unreachable_target_says_so():
    model = one_sensitive_layer()
    batches = _batches(2)
    result = fxquant.quantize_to_target(model, batches[0], AccuracyTarget("relative_error", 0.0),
                                        batches=batches, config=QuantConfig(weight_bits=2),
                                        max_kept=2)
    assert not result.met and len(result.kept) == 2 and len(result.trials) == 3


def test_targets_are_checked():
    with pytest.raises(ConfigError, match="metric"):
        AccuracyTarget("accuracy", 0.9)
    with pytest.raises(ConfigError, match="threshold"):
        AccuracyTarget("cosine", -1)


@pytest.mark.hf
def test_region_models_keep_layers_through_skip():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64,
                                  bos_token_id=0, eos_token_id=0, use_cache=False)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    batches = [(torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(i)),)
               for i in range(2)]
    result = fxquant.quantize_to_target(model, batches[0], AccuracyTarget("cosine", 1.0),
                                        batches=batches, config=QuantConfig(weight_bits=3),
                                        max_kept=1)
    (kept,) = result.kept
    record = fxquant.record_of(result.model)
    floats = {m.name: m.reason for m in record.float_modules}
    floats.update({layer.name: layer.reason for layer in record.float_layers})
    assert "kept in float by quantize_to_target" in floats[kept.name]
