"""Group-wise numerics and 4-bit packing (fxquant/algorithms/groupwise.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fxquant.algorithms import groupwise
from fxquant.algorithms.schemes import WeightScheme


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 4), half_k=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip_is_exact(n, half_k, seed):
    codes = torch.randint(0, 16, (n, 2 * half_k), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(seed))
    packed = groupwise.pack_int4(codes)
    assert packed.shape == (n, half_k) and packed.dtype == torch.uint8
    assert torch.equal(groupwise.unpack_int4(packed), codes)
    assert torch.equal(groupwise.stored_to_codes(packed, 2 * half_k), codes)


def test_pack_layout_is_even_k_in_the_low_nibble():
    codes = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    assert groupwise.pack_int4(codes).tolist() == [[0x21, 0x0F]]


@pytest.mark.parametrize("codes", [torch.tensor([[16, 0]], dtype=torch.uint8),
                                   torch.zeros(1, 3, dtype=torch.uint8)])
def test_pack_refuses_what_it_cannot_store(codes):
    with pytest.raises(ValueError):
        groupwise.pack_int4(codes)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), symmetric=st.booleans(), group_size=st.sampled_from([4, 16, 32]),
       groups=st.integers(1, 3), offset=st.floats(-3, 3), log_spread=st.floats(-5, 2),
       seed=st.integers(0, 2**31 - 1))
def test_groupwise_error_is_at_most_half_a_step(bits, symmetric, group_size, groups, offset,
                                                log_spread, seed):
    gen = torch.Generator().manual_seed(seed)
    w = offset + torch.randn(3, groups * group_size, generator=gen) * 10.0**log_spread
    q = groupwise.quantize_groupwise(w, bits, group_size, symmetric)
    assert q.codes.dtype == torch.uint8 and q.zero_point.dtype == torch.uint8
    assert q.scale.shape == q.zero_point.shape == (3, groups)
    assert int(q.codes.max()) <= 2**bits - 1
    if symmetric:
        assert int(q.codes.min()) >= 1 and bool((q.zero_point == 2 ** (bits - 1)).all())
    step = groupwise.expand_groups(q.scale, group_size)
    # Half a step, plus float rounding of the scale itself.
    assert bool(((q.dequantize() - w).abs() <= step * 0.5 * (1 + 1e-5) + 1e-30).all())


def test_zero_group_dequantizes_to_exact_zero():
    w = torch.cat([torch.zeros(2, 8), torch.randn(2, 8)], dim=1)
    q = groupwise.quantize_groupwise(w, 4, 8, symmetric=False)
    assert torch.equal(q.dequantize()[:, :8], torch.zeros(2, 8))
    assert bool((q.scale[:, 0] == 1).all())


def test_stored_codes_pack_only_four_bits_or_fewer():
    w = torch.randn(4, 32)
    four = groupwise.quantize_groupwise(w, 4, 16, True)
    six = groupwise.quantize_groupwise(w, 6, 16, True)
    assert four.stored_codes().shape == (4, 16) and six.stored_codes().shape == (4, 32)
    assert torch.equal(groupwise.unpack_int4(four.stored_codes()), four.codes)


def test_scheme_assembles_signed_codes_into_the_stored_form():
    w = torch.randn(4, 32)
    scheme = WeightScheme(4, symmetric=False, group_size=16)
    scale, zp = scheme.params(w)
    codes = scheme.codes(w, scheme.per_column(scale, 32), scheme.per_column(zp, 32))
    assembled = scheme.assemble(codes, scale, zp)
    rtn = scheme.quantize(w)
    assert torch.equal(assembled.codes, rtn.codes) and torch.equal(assembled.zero_point,
                                                                   rtn.zero_point)


def test_clip_search_never_rounds_a_group_worse_than_its_full_range():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(8, 64, generator=g)
    w[0, 3] = 12.0  # one extreme value in the first group of row 0
    full = groupwise_quantized(w, clip=False)
    clipped = groupwise_quantized(w, clip=True)
    err = lambda q: ((q - w) ** 2).reshape(8, 4, 16).sum(-1)  # noqa: E731
    assert bool((err(clipped) <= err(full) * (1 + 1e-6)).all())
    assert bool((err(clipped) < err(full)).any())


def groupwise_quantized(w, clip):
    scheme = WeightScheme(4, symmetric=False, group_size=16, clip_search=clip)
    scale, zp = scheme.params(w)
    codes = scheme.codes(w, scheme.per_column(scale, 64), scheme.per_column(zp, 64))
    return scheme.assemble(codes, scale, zp).dequantize()
