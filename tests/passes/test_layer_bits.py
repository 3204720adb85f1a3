"""QuantConfig.layer_bits: per-layer weight bits (mixed precision), through insert_observers, the
regions and the record."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxquant
from fxquant import QuantConfig
from fxquant.errors import ConfigError
from fxquant.observers import WeightObserver

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_config_checks_and_round_trips_layer_bits():
    cfg = QuantConfig(weight_bits=4, layer_bits=[("head", 8), ["body.1", 6]])
    assert cfg.layer_bits == (("head", 8), ("body.1", 6))
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.bits_for("head", 4) == 8 and cfg.bits_for("body.1.fc", 4) == 6
    assert cfg.bits_for("body.10", 4) == 4  # a prefix is a module path, not a string prefix
    assert QuantConfig(layer_bits=(("a", 3), ("a", 5))).bits_for("a", 8) == 5  # last one wins
    assert cfg.needs_pair_safe(8) and not cfg.needs_pair_safe_weights
    for bad in ((("a", 9),), (("a",),), ((1, 4),), (("a", True),)):
        with pytest.raises(ConfigError, match="layer_bits"):
            QuantConfig(layer_bits=bad)


def test_named_layers_get_their_bits_and_pair_safe_scales():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    observed = fxquant.prepare(model, (torch.randn(2, 8),),
                               QuantConfig(weight_bits=4, layer_bits=(("2", 8),)))
    observers = {m.target: m for m in observed.modules() if isinstance(m, WeightObserver)}
    assert observers["0"].bits == 4 and not observers["0"].pair_safe
    assert observers["2"].bits == 8 and observers["2"].pair_safe
    q = fxquant.convert(observed)
    schemes = {layer.name: layer.scheme for layer in fxquant.record_of(q).layers}
    assert schemes["0"].startswith("w4") and schemes["2"].startswith("w8")


@pytest.mark.hf
def test_region_models_take_layer_bits_by_full_name():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64,
                                  bos_token_id=0, eos_token_id=0, use_cache=False)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 64, (2, 8))
    config = QuantConfig(weight_bits=4, layer_bits=(("transformer.h.0.mlp.c_fc", 8),
                                                    ("transformer.h.0.attn", 6)))
    q = fxquant.quantize(model, (ids,), config=config)
    schemes = {layer.name: layer.scheme[:2] for layer in fxquant.record_of(q).quantized_layers}
    assert schemes["transformer.h.0.mlp.c_fc"] == "w8"  # a layer inside the mlp region
    assert schemes["transformer.h.0.mlp.c_proj"] == "w4"
    assert schemes["transformer.h.0.attn.c_attn"] == "w6"  # regions below a named module
    assert schemes["transformer.h.0.attn.c_proj"] == "w6"
    assert schemes["lm_head"] == "w4"
