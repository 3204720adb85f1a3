"""Group-wise quantization numerics and 4-bit packing (fxquant.kernels.packing)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fxquant import numerics
from fxquant.kernels import packing

F32 = torch.finfo(torch.float32)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5), half_k=st.integers(0, 40), seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip_is_exact(n, half_k, seed):
    codes = torch.randint(0, 16, (n, 2 * half_k), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(seed))
    packed = packing.pack_int4(codes)
    assert packed.shape == (n, half_k) and packed.dtype == torch.uint8
    assert torch.equal(packing.unpack_int4(packed), codes)


def test_pack_layout_is_even_k_in_the_low_nibble():
    codes = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    assert packing.pack_int4(codes).tolist() == [[0x21, 0x0F]]


@pytest.mark.parametrize(
    "codes",
    [torch.tensor([[16, 0]], dtype=torch.uint8), torch.zeros(1, 3, dtype=torch.uint8),
     torch.zeros(1, 2, dtype=torch.int8)],
)
def test_pack_refuses_what_it_cannot_store(codes):
    with pytest.raises(ValueError):
        packing.pack_int4(codes)


@settings(max_examples=80, deadline=None)
@given(
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
    group_size=st.sampled_from([8, 32, 64]),
    groups=st.integers(1, 3),
    offset=st.floats(-3, 3),
    log_spread=st.floats(-6, 2),
    seed=st.integers(0, 2**31 - 1),
)
def test_groupwise_error_is_at_most_half_a_step(bits, symmetric, group_size, groups, offset,
                                                log_spread, seed):
    """Every element lands within half a step (its group's scale / 2) of where it started, and
    every code and zero-point is in the unsigned range the kernels read."""
    gen = torch.Generator().manual_seed(seed)
    w = offset + torch.randn(4, groups * group_size, generator=gen) * 10.0**log_spread
    q = packing.quantize_groupwise(w, bits, group_size, symmetric)
    n, g = 4, groups
    assert q.codes.dtype == torch.uint8 and q.zero_point.dtype == torch.uint8
    assert q.scale.shape == (n, g) and q.zero_point.shape == (n, g)
    assert int(q.codes.max()) <= 2**bits - 1 and int(q.zero_point.max()) <= 2**bits - 1
    err = (packing.dequantize_groupwise(*q, group_size) - w).abs().reshape(n, g, group_size)
    step = q.scale.unsqueeze(-1)
    # float32 slack: w / scale and (q - zp) * scale each round once.
    slack = 4 * F32.eps * w.abs().reshape(n, g, group_size) + F32.tiny
    assert bool((err <= step / 2 + slack).all()), float((err / step).max())


def test_dequantize_groupwise_is_the_numerics_dequantization_bit_for_bit():
    q = packing.quantize_groupwise(torch.randn(6, 96), 4, 32, symmetric=False)
    expected = numerics.dequantize(q.codes.reshape(6, 3, 32), q.scale.unsqueeze(-1),
                                   q.zero_point.unsqueeze(-1)).reshape(6, 96)
    assert torch.equal(packing.dequantize_groupwise(*q, 32), expected)


def test_symmetric_four_bit_stores_code_plus_eight():
    w = torch.tensor([[-7.0, -3.5, 0.0, 7.0] * 8])
    q = packing.quantize_groupwise(w, 4, 32, symmetric=True)
    assert q.zero_point.tolist() == [[8]]
    assert q.scale.tolist() == [[1.0]]
    # -3.5 rounds half to even (-4), as fxquant.numerics and ONNX do.
    assert q.codes[0, :4].tolist() == [1, 4, 8, 15]


def test_asymmetric_uses_the_whole_range_and_all_zero_groups_stay_zero():
    w = torch.cat([torch.linspace(0.0, 1.5, 32), torch.zeros(32)]).unsqueeze(0)
    q = packing.quantize_groupwise(w, 4, 32, symmetric=False)
    assert q.codes[0, :32].min() == 0 and q.codes[0, :32].max() == 15
    assert q.scale[0, 1] == 1.0
    assert torch.equal(packing.dequantize_groupwise(*q, 32)[0, 32:], torch.zeros(32))


@pytest.mark.parametrize(
    ("shape", "bits", "group_size"), [((4, 30), 4, 32), ((4, 64), 9, 32), ((64,), 4, 32)]
)
def test_quantize_groupwise_refuses_bad_arguments(shape, bits, group_size):
    with pytest.raises(ValueError):
        packing.quantize_groupwise(torch.randn(shape), bits, group_size, True)
