"""AWQ's scale search and SmoothQuant's scales on single layers (fxquant/algorithms)."""

from __future__ import annotations

import torch

from fxquant.algorithms.awq import awq_scale, awq_search, output_error
from fxquant.algorithms.schemes import WeightScheme
from fxquant.algorithms.smoothing import smoothquant_scales


def _outlier_rows(rows, k=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g)
    x[:, :4] *= 25.0  # a few salient input channels
    return x


def test_awq_beats_round_to_nearest_on_outlier_channels():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 128, generator=g) * 0.05
    scheme = WeightScheme(4, True, group_size=32)
    found = awq_search(_outlier_rows(512), [w], [scheme], grid=20)
    assert found.alpha > 0 and found.error < 0.8 * found.rtn_error
    held_out = _outlier_rows(512, seed=3)
    assert (output_error(held_out, [w], [scheme], found.scale)
            < 0.8 * output_error(held_out, [w], [scheme], torch.ones(128)))


def test_alpha_zero_is_round_to_nearest():
    assert torch.equal(awq_scale(torch.rand(16) + 0.1, 0.0), torch.ones(16))


def test_smoothquant_scales_follow_the_formula_and_spare_dead_channels():
    act = torch.tensor([8.0, 1.0, 0.0])
    w1 = torch.tensor([[0.5, -2.0, 1.0]])
    w2 = torch.tensor([[-1.0, 0.5, 3.0]])
    s = smoothquant_scales(act, [w1, w2], alpha=0.5)
    expected = torch.tensor([8.0**0.5 / 1.0**0.5, 1.0 / 2.0**0.5, 1.0])
    torch.testing.assert_close(s, expected)
    assert smoothquant_scales(act, [w1], alpha=0.0)[0] == 1.0 / 0.5
