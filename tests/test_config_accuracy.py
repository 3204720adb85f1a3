"""QuantConfig's fields for outlier-aware and low-bit quantization: defaults, round trip,
old dicts, and a clear ConfigError for every combination that cannot work."""

from __future__ import annotations

import json

import pytest

from fxquant import ConfigError, QuantConfig

W4 = dict(mode="weight_only", weight_bits=4, weight_granularity="per_group")


def test_defaults_change_nothing_and_need_no_calibration():
    c = QuantConfig()
    assert (c.group_size, c.weight_method, c.smoothquant_alpha) == (128, "rtn", None)
    assert (c.gptq_damp, c.gptq_act_order, c.gptq_block_size) == (0.01, True, 128)
    assert c.calibration_needed_by is None


@pytest.mark.parametrize("config", [
    QuantConfig(**W4, group_size=64, weight_method="gptq", gptq_damp=0.05, gptq_act_order=False,
                gptq_block_size=32),
    QuantConfig(**W4, weight_method="awq", awq_grid=10, weight_symmetric=False),
    QuantConfig(mode="static", smoothquant_alpha=0.5),
    QuantConfig(mode="dynamic", smoothquant_alpha=0.8, activation_granularity="per_token"),
])
def test_round_trip_through_json(config):
    assert QuantConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_a_dict_written_before_these_fields_still_loads():
    old = QuantConfig().to_dict()
    for key in ("group_size", "weight_method", "gptq_damp", "gptq_act_order", "gptq_block_size",
                "awq_grid", "smoothquant_alpha", "activation_granularity", "gptq_clip_search"):
        old.pop(key)
    assert QuantConfig.from_dict(old) == QuantConfig()


@pytest.mark.parametrize("config,needed_by", [
    (QuantConfig(mode="static"), "static mode"),
    (QuantConfig(smoothquant_alpha=0.5), "SmoothQuant (smoothquant_alpha=0.5)"),
    (QuantConfig(**W4, weight_method="gptq"), "weight_method='gptq'"),
    (QuantConfig(**W4, weight_method="awq"), "weight_method='awq'"),
])
def test_what_needs_calibration_is_named(config, needed_by):
    assert config.calibration_needed_by == needed_by


@pytest.mark.parametrize("kwargs,match", [
    (dict(weight_granularity="per_group"), "per_group.*weight_only"),
    (dict(mode="static", weight_granularity="per_group"), "per_group.*weight_only"),
    (dict(**W4, group_size=0), "group_size=0"),
    (dict(**W4, group_size=33), "group_size=33"),
    (dict(weight_granularity="per_block"), "unknown weight_granularity"),
    (dict(weight_method="hqq"), "unknown weight_method 'hqq'"),
    (dict(weight_method="gptq", gptq_damp=0.0), "gptq_damp"),
    (dict(weight_method="gptq", gptq_block_size=0), "gptq_block_size"),
    (dict(weight_method="awq", awq_grid=1), "awq_grid"),
    (dict(smoothquant_alpha=1.5), "smoothquant_alpha=1.5"),
    (dict(smoothquant_alpha=True), "smoothquant_alpha=True"),
    (dict(mode="weight_only", smoothquant_alpha=0.5), "weight_only mode.*activations stay float"),
    (dict(smoothquant_alpha=0.5, weight_method="awq"), "both rescale"),
    (dict(mode="static", smoothquant_alpha=0.5, activation_observer="percentile"),
     "activation_observer='minmax'"),
    (dict(mode="static", weight_method="awq", activation_observer="moving_average"),
     "activation_observer='minmax'"),
    (dict(activation_granularity="per_row"), "unknown activation_granularity"),
    (dict(mode="static", activation_granularity="per_token"), "per_token.*dynamic"),
])
def test_impossible_combinations_are_refused_with_the_reason(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        QuantConfig(**kwargs)
