"""The fake quantizers round exactly as the int8 model does and pass the gradients QAT needs:
straight-through for weights, clipped straight-through for static activations, LSQ's step-size
gradient for learned scales (checked against a hand computation)."""

from __future__ import annotations

import math

import pytest
import torch

from fxquant import numerics
from fxquant.errors import ConfigError
from fxquant.fake_quantizers import (
    ActivationFakeQuant,
    WeightFakeQuant,
    fake_quantize_dynamic,
    fake_quantize_weight,
)
from fxquant.kernels import reference
from fxquant.observers import WeightObserver


def _weight_fq(bits=4, pair_safe=False, symmetric=True):
    return WeightFakeQuant(WeightObserver("w", bits, symmetric, True, pair_safe=pair_safe), 6)


def test_weight_forward_is_the_lowering_grid_and_gradient_is_straight_through():
    w = torch.randn(6, 10, requires_grad=True)
    fq = _weight_fq()
    out = fq(w)
    assert torch.equal(out, numerics.quantize_weight(w, 4, True, True).dequantize())
    out.mul(torch.arange(60.0).reshape(6, 10)).sum().backward()
    assert torch.equal(w.grad, torch.arange(60.0).reshape(6, 10))


def test_learned_weight_scale_gradient_is_lsq():
    torch.manual_seed(1)
    w = torch.randn(6, 10, requires_grad=True)
    fq = _weight_fq(bits=3)
    fq.learn_scale()
    fq(w)  # the first call sets the scale to the min-max one
    with torch.no_grad():
        fq.scale.mul_(0.6)  # some weights now fall outside the grid
    out = fq(w)
    out.sum().backward()
    s = fq.scale.detach().reshape(6, 1)
    v = w.detach() / s
    q = torch.round(v)
    clamped = q.clamp(-3, 3)
    inside = clamped == q
    assert torch.allclose(out, clamped * s)
    step = torch.where(inside, q - v, clamped)
    expected = step.sum(dim=1) / math.sqrt(10 * 3)
    torch.testing.assert_close(fq.scale.grad, expected)
    torch.testing.assert_close(w.grad, inside.float())


def test_learned_scale_respects_the_pair_safe_floor():
    w = torch.full((6, 10), 1.0)
    w[0, :2] = 0.9  # a large same-sign pair in every row
    fq = _weight_fq(bits=8, pair_safe=True)
    fq.learn_scale()
    fq(w)
    with torch.no_grad():
        fq.scale.mul_(0.1)  # learned far below the floor
    codes = fq.quantize(w).codes
    assert numerics.kernel_pair_sums(codes).max() <= numerics.PAIR_SUM_LIMIT


def test_learned_scale_needs_symmetric_weights():
    with pytest.raises(ConfigError, match="symmetric"):
        _weight_fq(symmetric=False).learn_scale()


def test_dynamic_activation_is_the_reference_kernel():
    x = torch.randn(4, 16, requires_grad=True)
    out = ActivationFakeQuant("x", "dynamic", False)(x)
    assert torch.equal(out, reference.fake_quantize_dynamic(x.detach(), False))
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert torch.equal(fake_quantize_dynamic(x, True), reference.fake_quantize_dynamic(x, True))


def test_static_activation_moving_average_and_clipped_gradient():
    fq = ActivationFakeQuant("x", "static", False, momentum=0.5)
    fq(torch.tensor([[-1.0, 1.0]]))
    fq(torch.tensor([[-3.0, 3.0]]))
    assert fq.quant_range() == (-2.0, 2.0)  # (1 - 0.5) * 1 + 0.5 * 3
    fq.eval()
    x = torch.tensor([[-5.0, 0.3, 5.0]], requires_grad=True)
    out = fq(x)
    scale, zp = numerics.activation_qparams(-2.0, 2.0, False)
    assert torch.equal(out, numerics.fake_quantize(x.detach(), scale, zp,
                                                   numerics.activation_qrange(False)))
    assert fq.quant_range() == (-2.0, 2.0)  # eval mode: frozen
    out.sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 0.0]]  # clamped values get no gradient


def test_learned_activation_scale_starts_from_the_first_batch():
    fq = ActivationFakeQuant("x", "static", False)
    fq.learn_scale()
    x = torch.linspace(-1, 3, 50, requires_grad=True)
    out = fq(x)
    scale, zp = numerics.activation_qparams(-1.0, 3.0, False)
    assert fq.scale.item() == pytest.approx(scale) and int(fq.zero_point) == zp
    out.sum().backward()
    assert fq.scale.grad is not None
    lo, hi = fq.quant_range()
    assert numerics.activation_qparams(lo, hi, False)[1] == zp


def test_seed_helper_matches_numerics():
    w = torch.randn(5, 7)
    assert torch.equal(fake_quantize_weight(w, 6, True, True),
                       numerics.quantize_weight(w, 6, True, True).dequantize())
