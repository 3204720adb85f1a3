"""fxquant's dynamic int8 kernel on VNNI panels (``fxquant_cpu::linear_int8_dynamic``).

Its activations are quantized with the reference's own parameters and rounding and the products
are exact in int32, so it must equal the reference (fake-quantized x times the dequantized weight)
to float32 rounding of the final scaling: far inside one activation quantization step. The
plain C++ loop that serves when the VNNI kernel is not selected must agree with it exactly.
"""

from __future__ import annotations

import pytest
import torch

from fxquant import numerics
from fxquant.kernels import dynamic, packing, reference
from fxquant.kernels import weight_only as wo

pytestmark = pytest.mark.skipif(not wo.available(),
                                reason=f"extension not built: {wo.status().detail}")
M_VALUES = (1, 2, 3, 5, 6, 7, 13, 40)  # every tile height, and tails
SHAPES = ((64, 48), (13, 7), (771, 130), (256, 50))  # K not a multiple of 4, partial panels


def _layer(k: int, n: int, with_bias: bool) -> tuple[numerics.QuantizedWeight, dynamic.VnniLinear]:
    qw = numerics.quantize_weight(torch.randn(n, k), 8, symmetric=True, per_channel=True)
    bias = torch.randn(n) if with_bias else None
    return qw, dynamic.pack(qw.codes, qw.scale, bias)


def _reference(x: torch.Tensor, qw: numerics.QuantizedWeight, layer: dynamic.VnniLinear,
               reduce_range: bool, relu: bool) -> torch.Tensor:
    y = reference.fake_quantize_dynamic(x, reduce_range) @ qw.dequantize().T
    y = y if layer.bias is None else y + layer.bias
    return torch.relu(y) if relu else y


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("reduce_range", [False, True])
@pytest.mark.parametrize("m", M_VALUES)
@pytest.mark.parametrize(("k", "n"), SHAPES)
def test_matches_the_reference_within_rounding(k, n, m, reduce_range, relu):
    qw, layer = _layer(k, n, with_bias=m % 2 == 1)
    x = torch.randn(m, k) * 3
    y = dynamic.linear(x, layer, reduce_range, relu)
    expected = _reference(x, qw, layer, reduce_range, relu)
    assert y.shape == (m, n)
    # float32 rounding of sums of |K| products: 1e-5 of their magnitude (one activation step
    # would move an output by ~x_scale * |w| / 2, orders of magnitude more).
    magnitude = x.abs() @ qw.dequantize().abs().T + 1.0
    assert ((y - expected).abs() <= 1e-5 * magnitude).all()


def test_the_fallback_loop_equals_the_vnni_kernel():
    _, layer = _layer(100, 37, with_bias=True)
    x = torch.randn(9, 100)
    fast = dynamic.linear(x, layer, False)
    previous = wo.kernel_isa("avx2")  # not AVX-512: the plain loop
    try:
        assert not dynamic.available()
        slow = dynamic.linear(x, layer, False)
    finally:
        wo.kernel_isa(previous)
    torch.testing.assert_close(slow, fast, rtol=1e-6, atol=1e-6)


def test_pack_round_trip_layout_and_shapes():
    codes = torch.randint(-127, 128, (21, 10), dtype=torch.int8)
    layer = dynamic.pack(codes, torch.rand(21) + 0.1, None)
    assert layer.codes.shape == (2, 3, 16, 4)
    assert torch.equal(layer.codes[1, 2, 4, 1], codes[20, 9])  # channel 16+4, k = 4*2+1
    assert not layer.codes[1, :, 5:].any() and not layer.codes[:, 2, :, 2:].any()  # padding
    assert torch.equal(layer.row_sum, codes.sum(1, dtype=torch.int32))
    assert torch.equal(dynamic.unpack(layer), codes)
    assert torch.equal(packing.unblock_int8_vnni(layer.codes, 21, 10), codes)
    x3 = torch.randn(2, 3, 10)
    assert dynamic.linear(x3, layer, False).shape == (2, 3, 21)
    with pytest.raises(ValueError, match="K=10"):
        dynamic.linear(torch.randn(2, 11), layer, False)


@pytest.mark.parametrize("m", (1, 6, 13))
@pytest.mark.parametrize(("k", "n"), SHAPES)
def test_per_token_matches_the_reference_within_rounding(k, n, m):
    qw, layer = _layer(k, n, with_bias=True)
    # Rows of very different magnitudes: what per-token quantization is for.
    x = torch.randn(m, k) * torch.logspace(-2, 2, m)[:, None]
    x[0] = 0.0  # an all-zero row stays exactly zero (before the bias)
    y = dynamic.linear(x, layer, False, per_token=True)
    expected = reference.linear_dynamic_per_token(x, qw.codes, qw.scale, qw.zero_point,
                                                  layer.bias, False)
    magnitude = x.abs() @ qw.dequantize().abs().T + layer.bias.abs() + 1e-3
    assert ((y - expected).abs() <= 1e-5 * magnitude).all()
    assert torch.equal(y[0], layer.bias)


@pytest.mark.parametrize("shape", [(5, 37), (2, 3, 384), (1, 8)])
def test_per_token_scaling_ops_are_bit_identical_to_aten(shape):
    x = torch.randn(shape) * torch.logspace(-3, 3, shape[-1])
    x[..., 0, :] = 0.0 if len(shape) > 1 else x[..., 0, :]  # an all-zero row: r = smallest normal
    scaled, r = dynamic.divide_rows_by_absmax(x)
    expected_r = reference.token_scales(x)
    assert torch.equal(r, expected_r) and torch.equal(scaled, x / expected_r)
    y, bias = torch.randn(*shape[:-1], 21), torch.randn(21)
    assert torch.equal(dynamic.scale_rows_add_bias_(y.clone(), r, bias), y * r + bias)
    assert torch.equal(dynamic.scale_rows_add_bias_(y.clone(), r, None), y * r)
