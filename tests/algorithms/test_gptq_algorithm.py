"""GPTQ on single layers (fxquant/algorithms/gptq.py): lower reconstruction error than
round-to-nearest on correlated inputs, static groups, dead columns, pair-safe codes."""

from __future__ import annotations

import pytest
import torch

from fxquant import numerics
from fxquant.algorithms.gptq import gptq_quantize, limit_pair_sums, reconstruction_error
from fxquant.algorithms.schemes import WeightScheme


def _layer(n=48, k=128, rows=1024, seed=0):
    """Inputs with strongly correlated channels (a low-rank signal plus noise) and a weight."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 16, generator=g) @ torch.randn(16, k, generator=g)
    x = x + 0.05 * torch.randn(rows, k, generator=g)
    w = torch.randn(n, k, generator=g) * 0.05
    return x, w, 2.0 * x.T @ x / rows


SCHEMES = [
    WeightScheme(8, True),
    WeightScheme(4, True, group_size=32),
    WeightScheme(4, False, group_size=64),
    WeightScheme(3, True),
]


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_reconstructs_the_layer_better_than_rounding(scheme, act_order):
    x, w, h = _layer()
    _held_out, _, _ = _layer(seed=0)  # the same distribution
    result = gptq_quantize(w, h, scheme, act_order=act_order, block_size=32)
    gptq = reconstruction_error(x, w, result.weight.dequantize())
    rtn = reconstruction_error(x, w, scheme.fake_quantize(w))
    assert gptq < 0.6 * rtn, (gptq, rtn)


def test_static_groups_keep_round_to_nearest_parameters_and_layout():
    """Act-order permutes the columns while quantizing; the stored groups are the natural ones."""
    _x, w, h = _layer()
    scheme = WeightScheme(4, False, group_size=32)
    result = gptq_quantize(w, h, scheme, act_order=True).weight
    rtn = scheme.quantize(w)
    assert torch.equal(result.scale, rtn.scale) and torch.equal(result.zero_point,
                                                                rtn.zero_point)
    assert result.codes.shape == w.shape and result.codes.dtype == torch.uint8
    # Codes differ from rounding (errors were compensated) but stay on the grid.
    assert not torch.equal(result.codes, rtn.codes)
    assert int(result.codes.max()) <= 15


def test_columns_the_calibration_never_saw_get_the_zero_point():
    x, w, _ = _layer(k=64)
    x[:, 5] = 0.0
    h = 2.0 * x.T @ x / x.shape[0]
    q = gptq_quantize(w, h, WeightScheme(8, True), act_order=True).weight
    assert bool((q.codes[:, 5] == q.zero_point).all())


def test_pair_safe_gptq_codes_cannot_saturate():
    _x, w, h = _layer(k=64)
    w[:, 0:2] = 0.3  # a same-sign pair at the top of the range
    q = gptq_quantize(w, h, WeightScheme(8, True, pair_safe=True)).weight
    assert float(numerics.pair_sums(q.codes).max()) <= numerics.PAIR_SUM_LIMIT


def test_limit_pair_sums_touches_only_pairs_over_the_limit():
    codes = torch.tensor([[127.0, 127.0, 100.0, 20.0, -127.0, -3.0, 5.0]])
    fixed = limit_pair_sums(codes)
    assert float(numerics.pair_sums(fixed).max()) <= numerics.PAIR_SUM_LIMIT
    assert fixed[0, 2:4].tolist() == [100.0, 20.0]  # already safe: unchanged
    assert fixed[0, 6].item() == 5.0  # odd tail column: unchanged
    assert fixed[0, 0:2].tolist() == [64.0, 64.0] and fixed[0, 4:6].tolist() == [-126.0, -2.0]


def test_damping_grows_until_the_hessian_factors():
    _x, w, _ = _layer(k=32)
    h = -torch.eye(32)  # not positive definite at any small damping
    with pytest.raises(ValueError, match="positive definite"):
        gptq_quantize(w, h, WeightScheme(8, True))
