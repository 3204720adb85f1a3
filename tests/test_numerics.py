"""Property tests for fxquant.numerics, the single definition of the quantization math."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fxquant import numerics
from fxquant.kernels import reference

SETTINGS = settings(max_examples=150, deadline=None)

# Magnitudes from near-underflow to large, but far from float32 overflow so that ``x / scale``
# stays finite.
_MAGNITUDE = st.floats(min_value=1e-30, max_value=1e20)
_OFFSET = st.floats(min_value=-1.0, max_value=1.0)


def _float_eps(x: torch.Tensor) -> torch.Tensor:
    """Slack for float32 rounding in ``x / scale`` and ``q * scale`` (a few ulps of |x|)."""
    return 4 * torch.finfo(torch.float32).eps * x.abs() + torch.finfo(torch.float32).tiny


@st.composite
def weights(draw: st.DrawFn) -> torch.Tensor:
    rows = draw(st.integers(1, 6))
    cols = draw(st.integers(1, 9))
    magnitude = draw(_MAGNITUDE)
    offset = draw(_OFFSET)
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(rows, cols, generator=g) * 2 - 1 + offset) * magnitude
    # Per-row spread differs by orders of magnitude, so per-channel and per-tensor scales differ.
    row_scale = 10.0 ** torch.randint(-3, 1, (rows, 1), generator=g).float()
    return w * row_scale


@SETTINGS
@given(
    w=weights(),
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
    per_channel=st.booleans(),
)
def test_weight_round_trip_within_half_step(w, bits, symmetric, per_channel):
    qw = numerics.quantize_weight(w, bits, symmetric, per_channel)
    qr = numerics.weight_qrange(bits, symmetric)

    assert qw.codes.dtype == torch.int8
    assert qw.scale.dtype == torch.float32 and qw.zero_point.dtype == torch.int32
    assert qw.scale.shape == qw.zero_point.shape == (w.shape[0],)
    assert int(qw.codes.min()) >= qr.qmin and int(qw.codes.max()) <= qr.qmax
    assert bool((qw.zero_point >= qr.qmin).all()) and bool((qw.zero_point <= qr.qmax).all())
    assert bool((qw.scale > 0).all()) and bool(torch.isfinite(qw.scale).all())
    if symmetric:
        assert not qw.zero_point.any()
    if not per_channel:
        assert torch.equal(qw.scale, qw.scale[:1].expand_as(qw.scale))
        assert torch.equal(qw.zero_point, qw.zero_point[:1].expand_as(qw.zero_point))

    # Every value of a weight lies inside the range its own scale was derived from, so rounding
    # is the only error: at most half a step of its channel's scale.
    err = (qw.dequantize() - w).abs()
    bound = qw.scale.unsqueeze(1) / 2 + _float_eps(w)
    assert bool((err <= bound).all()), float((err - bound).max())


@SETTINGS
@given(
    lo=st.floats(min_value=-1e6, max_value=1e6),
    width=st.floats(min_value=1e-6, max_value=1e6),
    reduce_range=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_activation_round_trip_within_half_step(lo, width, reduce_range, seed):
    g = torch.Generator().manual_seed(seed)
    x = lo + width * torch.rand(64, generator=g)
    x = torch.cat([x, torch.tensor([lo, lo + width])])
    scale, zp = numerics.activation_qparams(float(x.min()), float(x.max()), reduce_range)
    qr = numerics.activation_qrange(reduce_range)

    assert qr == numerics.QRange(0, 127 if reduce_range else 255)
    assert qr.qmin <= zp <= qr.qmax
    q = numerics.quantize(x, scale, zp, qr, torch.uint8)
    assert q.dtype == torch.uint8
    assert int(q.min()) >= qr.qmin and int(q.max()) <= qr.qmax

    err = (numerics.dequantize(q, scale, zp) - x).abs()
    bound = scale / 2 + _float_eps(x)
    assert bool((err <= bound).all()), float((err - bound).max())


@SETTINGS
@given(
    lo=st.floats(min_value=-1e6, max_value=1e6),
    hi=st.floats(min_value=-1e6, max_value=1e6),
    reduce_range=st.booleans(),
)
def test_activation_qparams_keep_zero_exact(lo, hi, reduce_range):
    lo, hi = min(lo, hi), max(lo, hi)
    scale, zp = numerics.activation_qparams(lo, hi, reduce_range)
    qr = numerics.activation_qrange(reduce_range)

    assert isinstance(zp, int) and qr.qmin <= zp <= qr.qmax
    assert math.isfinite(scale) and scale >= numerics.MIN_ACTIVATION_SCALE
    zero = torch.zeros(3)
    q = numerics.quantize(zero, scale, zp, qr, torch.uint8)
    assert torch.equal(q, torch.full((3,), zp, dtype=torch.uint8))
    assert torch.equal(numerics.dequantize(q, scale, zp), zero)
    # The representable range covers [min(lo, 0), max(hi, 0)] to within the zero-point nudge.
    assert (qr.qmin - zp) * scale <= min(lo, 0.0) + scale / 2 + 1e-9 * abs(lo)
    assert (qr.qmax - zp) * scale >= max(hi, 0.0) - scale / 2 - 1e-9 * abs(hi)


def test_round_half_to_even_at_scale_one():
    x = torch.tensor([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5])
    expected = torch.tensor([0, 2, 2, 4, 0, -2, -2], dtype=torch.int8)
    qr = numerics.weight_qrange(8, symmetric=True)
    assert torch.equal(numerics.quantize(x, 1.0, 0, qr, torch.int8), expected)
    assert torch.equal(numerics.fake_quantize(x, 1.0, 0, qr), expected.float())


def test_round_half_to_even_through_weight_and_activation_params():
    # A symmetric 8-bit weight whose absmax is 127 gets scale exactly 1.
    w = torch.tensor([[127.0, 0.5, 1.5, 2.5, -2.5]])
    qw = numerics.quantize_weight(w, 8, symmetric=True, per_channel=True)
    assert qw.scale.item() == 1.0
    assert qw.codes.tolist() == [[127, 0, 2, 2, -2]]

    # Activation range [0, 127] at 7 bits: scale 1, zero-point 0.
    scale, zp = numerics.activation_qparams(0.0, 127.0, reduce_range=True)
    assert (scale, zp) == (1.0, 0)
    x = torch.tensor([0.5, 1.5, 2.5, 126.5, 127.0])
    assert reference.fake_quantize_dynamic(x, True).tolist() == [0.0, 2.0, 2.0, 126.0, 127.0]


@pytest.mark.parametrize("value", [0.0, 1e-30, -1e-30, 1e-40, -1e-40])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
def test_zero_and_tiny_weights_stay_finite(value, symmetric, per_channel):
    w = torch.full((3, 4), value)
    w[1] = 0.0  # an all-zero channel next to the tiny ones
    qw = numerics.quantize_weight(w, 8, symmetric, per_channel)
    assert bool(torch.isfinite(qw.scale).all()) and bool((qw.scale > 0).all())
    deq = qw.dequantize()
    assert bool(torch.isfinite(deq).all())
    assert bool(((deq - w).abs() <= qw.scale.unsqueeze(1) / 2).all())
    if value == 0.0:
        assert not qw.codes.any() and not deq.any()


@pytest.mark.parametrize("value", [0.0, 1e-30, -1e-30, 1e-40, -1e-40])
@pytest.mark.parametrize("reduce_range", [True, False])
def test_zero_and_tiny_activations_stay_finite(value, reduce_range):
    x = torch.full((5,), value)
    x[0] = 0.0
    lo, hi = torch.aminmax(x)
    scale, _ = numerics.activation_qparams(lo.item(), hi.item(), reduce_range)
    assert math.isfinite(scale) and scale > 0
    out = reference.fake_quantize_dynamic(x, reduce_range)
    assert bool(torch.isfinite(out).all())
    assert bool(((out - x).abs() <= scale / 2).all())
    assert out[0].item() == 0.0


def test_weight_qparams_of_zero_range_channel():
    scale, zp = numerics.weight_qparams(torch.zeros(2), torch.zeros(2), 8, symmetric=False)
    assert scale.tolist() == [1.0, 1.0] and zp.tolist() == [0, 0]


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 33),
    seed=st.integers(0, 2**16),
    spread=st.sampled_from([0.01, 1.0, 100.0]),
)
def test_pair_safe_codes_never_reach_the_int16_limit(rows, cols, seed, spread):
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(rows, cols, generator=g) - 0.3) * spread  # many same-sign pairs
    qw = numerics.quantize_weight(w, 8, symmetric=True, per_channel=True, pair_safe=True)
    assert int(numerics.pair_sums(qw.codes).max()) <= numerics.PAIR_SUM_LIMIT
    assert int(qw.codes.abs().max()) <= 127
    # The worst vpmaddubsw pair sum with u8 activations fits int16.
    assert 255 * int(numerics.pair_sums(qw.codes).max()) <= 32767
    # Rows whose float pairs already fit at the min-max scale keep that scale.
    plain = numerics.quantize_weight(w, 8, symmetric=True, per_channel=True)
    peak = numerics.pair_sums(w).amax(dim=1)
    safe_rows = peak / (numerics.PAIR_SUM_LIMIT - 1) <= plain.scale
    assert torch.equal(qw.scale[safe_rows], plain.scale[safe_rows])
