"""fxquant.fake_quant: FakeQuantizeLinear and apply_fake_quant_to_model train with ordinary
PyTorch code and simulate exactly what the int8 model computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from seed_helpers import state_equal
from torch import nn

from fxquant import numerics
from fxquant.errors import ConfigError
from fxquant.fake_quant import FakeQuantizeLinear, apply_fake_quant_to_model
from fxquant.real_quant import convert_to_real_quant


def test_apply_returns_a_copy_with_fake_quant_layers(mlp):
    snapshot = {k: v.clone() for k, v in mlp.state_dict().items()}
    fq = apply_fake_quant_to_model(mlp, bits=8)
    assert fq is not mlp
    assert [type(m) for m in fq] == [FakeQuantizeLinear, nn.ReLU, FakeQuantizeLinear]
    assert [type(m) for m in mlp] == [nn.Linear, nn.ReLU, nn.Linear]
    assert all(torch.equal(snapshot[k], v) for k, v in mlp.state_dict().items())
    # Same keys and values as the float model: trained weights load back into it.
    assert state_equal(fq, mlp)
    assert fq.training == mlp.training


def test_a_training_step_reduces_the_loss_and_gradients_flow(mlp, calibration_loader):
    fq = apply_fake_quant_to_model(mlp).train()
    optimizer = torch.optim.SGD(fq.parameters(), lr=0.05)
    x, y = next(iter(calibration_loader))
    y = (y + 1) % 10  # something to learn
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = F.cross_entropy(fq(x), y)
        loss.backward()
        losses.append(loss.item())
        for p in fq.parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0
        optimizer.step()
    assert losses[-1] < losses[0]
    # Training moved the copy's weights only.
    assert not torch.equal(fq[0].weight, mlp[0].weight)


def test_gradient_is_straight_through():
    torch.manual_seed(0)
    layer = FakeQuantizeLinear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    layer(x).sum().backward()
    # d(sum(x_q W_q^T))/dW = column sums of x_q, passed straight to W (and to x through W_q).
    xq = layer.quantized_input(x.detach())
    torch.testing.assert_close(layer.weight.grad, xq.sum(0).expand(4, 8))
    torch.testing.assert_close(x.grad, layer.quantized_weight().detach().sum(0).expand(3, 8))


def test_forward_rounds_weights_to_the_int8_grid():
    torch.manual_seed(0)
    layer = FakeQuantizeLinear(16, 8, quantize_activations=False)
    qw = numerics.quantize_weight(layer.weight, 8, symmetric=True, per_channel=True)
    assert torch.equal(layer.quantized_weight(), qw.dequantize())
    x = torch.randn(2, 16)
    torch.testing.assert_close(layer(x), F.linear(x, qw.dequantize(), layer.bias))


def test_rounded_weight_follows_optimizer_updates():
    torch.manual_seed(0)
    layer = FakeQuantizeLinear(16, 8)
    before = layer.quantized_weight().detach().clone()
    with torch.no_grad():
        layer.weight.mul_(2)
    assert torch.allclose(layer.quantized_weight(), before * 2, atol=1e-6)


def test_fake_quant_simulates_the_real_int8_model(mlp, test_loader):
    fq = apply_fake_quant_to_model(mlp).eval()
    real = convert_to_real_quant(fq)
    x, _ = next(iter(test_loader))
    with torch.no_grad():
        sim, out = fq(x), real(x)
    # Same codes, same scales: only float summation order differs.
    torch.testing.assert_close(out, sim, rtol=1e-5, atol=1e-5 * sim.abs().max().item())


def test_bits_are_checked():
    with pytest.raises(ConfigError):
        FakeQuantizeLinear(4, 4, bits=9)
    with pytest.raises(ConfigError):
        apply_fake_quant_to_model(nn.Linear(4, 4), bits=1)
