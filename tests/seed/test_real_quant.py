"""fxquant.real_quant: RealQuantize, RealQuantizeLinear, convert_to_real_quant, to_float_model."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from hypothesis import given, settings
from hypothesis import strategies as st
from seed_helpers import int8_keys
from torch import nn

import fxquant
from fxquant import numerics, ops
from fxquant.capture import is_quantized
from fxquant.errors import AlreadyQuantizedError, ConfigError
from fxquant.real_quant import (
    RealQuantize,
    RealQuantizeLinear,
    convert_to_real_quant,
    quant_config_of,
    real_quant_layers,
    to_float_model,
)

# --- RealQuantize --------------------------------------------------------------------------------


def _half_step(rq: RealQuantize) -> float:
    """Half a quantization step, plus float32 rounding of x / scale at the largest code (which
    matters at 16 bits: 32767 * 2**-23 is 0.4% of a step)."""
    return rq.scale.item() * (0.5 + rq.qrange.qmax * 2**-21)


@pytest.mark.parametrize("bits", [4, 8, 16])
@pytest.mark.parametrize("symmetric", [True, False])
def test_real_quantize_round_trip_within_half_a_step(bits, symmetric):
    x = torch.randn(1000) * 3 + (0 if symmetric else 1)
    rq = RealQuantize(bits=bits, symmetric=symmetric)
    q = rq.quantize(x)
    assert q.dtype == (torch.int8 if bits <= 8 else torch.int16)
    qr = numerics.weight_qrange(bits, symmetric)
    assert qr.qmin <= int(q.min()) and int(q.max()) <= qr.qmax
    err = (rq.dequantize(q) - x).abs().max()
    assert err <= _half_step(rq)
    if symmetric:
        assert int(rq.zero_point) == 0


def test_real_quantize_uses_the_core_numerics():
    w = torch.randn(16, 32)
    rq = RealQuantize(bits=8, symmetric=True, axis=0).calibrate(w)
    ref = numerics.quantize_weight(w, 8, symmetric=True, per_channel=True)
    assert torch.equal(rq.quantize(w), ref.codes)
    assert torch.equal(rq.scale, ref.scale)


def test_real_quantize_calibrate_widens_range_over_batches():
    rq = RealQuantize(bits=8)
    rq.calibrate(torch.tensor([-1.0, 1.0]))
    scale_1 = rq.scale.item()
    rq.calibrate(torch.tensor([-0.5, 3.0]))
    assert rq.max_val.item() == 3.0 and rq.min_val.item() == -1.0
    assert rq.scale.item() == pytest.approx(3.0 / 127) and rq.scale.item() > scale_1


def test_real_quantize_forward_is_fake_quant_and_bits_are_checked():
    x = torch.linspace(-2, 2, 101)
    rq = RealQuantize(bits=4)
    y = rq(x)
    assert y.dtype == torch.float32 and len(torch.unique(y)) <= 15
    with pytest.raises(ConfigError):
        RealQuantize(bits=1)
    with pytest.raises(ConfigError):
        RealQuantize(bits=17)


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=64),
    bits=st.sampled_from([2, 4, 8, 16]),
    symmetric=st.booleans(),
)
def test_real_quantize_round_trip_property(values, bits, symmetric):
    x = torch.tensor(values, dtype=torch.float32)
    rq = RealQuantize(bits=bits, symmetric=symmetric)
    err = (rq(x) - x).abs().max().item()
    # Half a step for rounding; clamping cannot occur since the range covers the data.
    assert err <= _half_step(rq)


# --- RealQuantizeLinear --------------------------------------------------------------------------


def _layer(in_features=64, out_features=32, **kw) -> tuple[nn.Linear, RealQuantizeLinear]:
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features)
    return linear, RealQuantizeLinear.from_float(linear, **kw)


def test_float_state_behaves_like_linear_and_quantizes_in_place():
    torch.manual_seed(0)
    layer = RealQuantizeLinear(10, 20)
    x = torch.randn(3, 10)
    assert not layer.is_quantized and not is_quantized(nn.Sequential(layer))
    expected = nn.functional.linear(x, layer.weight, layer.bias)
    assert torch.equal(layer(x), expected)
    assert layer.quantize_weights() is layer
    assert layer.is_quantized and layer._fxquant_quantized and is_quantized(nn.Sequential(layer))
    assert layer.weight is None and not list(layer.parameters())
    assert {k: v.dtype for k, v in layer.state_dict().items()} == {
        "w_int8": torch.int8,
        "w_scale": torch.float32,
        "w_zp": torch.int32,
        "bias": torch.float32,
    }
    codes = layer.w_int8.clone()
    layer.quantize_weights()  # a second call changes nothing
    assert torch.equal(layer.w_int8, codes)


def test_weights_preserved_to_half_a_step():
    linear, layer = _layer()
    err = (layer.dequantized_weight() - linear.weight).abs()
    assert (err <= layer.w_scale[:, None] / 2 * (1 + 1e-5)).all()
    assert torch.equal(layer.bias, linear.bias.detach())


@pytest.mark.parametrize("batch_shape", [(1,), (8,), (2, 5)])
def test_forward_runs_the_fused_op_and_matches_the_reference_kernel(batch_shape):
    linear, layer = _layer()
    x = torch.randn(*batch_shape, 64)
    with torch.no_grad():
        fast = layer(x)
        with ops.reference_kernels():
            ref = layer(x)
        fp32 = linear(x)
    assert fast.shape == (*batch_shape, 32)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    # int8 error against fp32: a few activation steps times the weights' row norm.
    x_step = (x.max() - x.min()).item() / 127
    bound = 2 * x_step * linear.weight.abs().sum(dim=1).max().item()
    assert (fast - fp32).abs().max().item() < bound


def test_forward_is_one_fused_int8_call_not_dequantize_then_matmul():
    _, layer = _layer()
    gm = fx.symbolic_trace(nn.Sequential(layer))
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets == [ops.linear_dynamic]


def test_weight_only_mode_keeps_float_activations():
    _linear, layer = _layer(mode="weight_only")
    x = torch.randn(4, 64)
    with torch.no_grad():
        expected = nn.functional.linear(x, layer.dequantized_weight(), layer.bias)
        torch.testing.assert_close(layer(x), expected, rtol=1e-3, atol=1e-3)
    gm = fx.symbolic_trace(nn.Sequential(layer))
    assert ops.linear_weight_only in [n.target for n in gm.graph.nodes]


def test_real_quantize_linear_refuses_impossible_settings():
    with pytest.raises(ConfigError):
        RealQuantizeLinear(4, 4, bits=16)
    with pytest.raises(ConfigError):
        RealQuantizeLinear(4, 4, mode="static")


# --- convert_to_real_quant -----------------------------------------------------------------------


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 32), nn.GELU())
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        h = self.encoder(x)
        h, _ = self.attn(h, h, h)
        return self.head(h)


def test_convert_returns_an_int8_copy_and_leaves_the_model_alone(mlp):
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    mlp.train()
    qmodel = convert_to_real_quant(mlp, bits=8)
    assert qmodel is not mlp and mlp.training and not qmodel.training
    assert all(type(m) is nn.Linear for m in (mlp[0], mlp[2]))
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())
    assert [type(m) for m in qmodel] == [RealQuantizeLinear, nn.ReLU, RealQuantizeLinear]
    assert int8_keys(qmodel) == ["0.w_int8", "2.w_int8"]
    assert len(real_quant_layers(qmodel)) == 2


def test_convert_reaches_nested_layers_but_not_attention_internals():
    model = Nested().eval()
    qmodel = convert_to_real_quant(model)
    assert isinstance(qmodel.encoder[0], RealQuantizeLinear)
    assert isinstance(qmodel.head, RealQuantizeLinear)
    # MultiheadAttention reads out_proj.weight itself: its NonDynamicallyQuantizableLinear stays.
    assert not isinstance(qmodel.attn.out_proj, RealQuantizeLinear)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        assert (qmodel(x) - model(x)).abs().max() < 0.05


def test_convert_a_lone_linear_and_refuse_a_quantized_model():
    layer = convert_to_real_quant(nn.Linear(8, 8))
    assert isinstance(layer, RealQuantizeLinear) and layer.is_quantized
    with pytest.raises(AlreadyQuantizedError):
        convert_to_real_quant(nn.Sequential(layer))
    x = torch.randn(2, 8)
    gm = fxquant.quantize(nn.Sequential(nn.Linear(8, 8)), (x,))
    with pytest.raises(AlreadyQuantizedError):
        convert_to_real_quant(gm)


@pytest.mark.parametrize("bits", [4, 8])
def test_compression_of_the_document_model(mlp, bits):
    qmodel = convert_to_real_quant(mlp, bits=bits)
    from fxquant.measure import model_size_bytes

    assert model_size_bytes(mlp) / model_size_bytes(qmodel) >= 3.9


# --- back to fxquant.quantize --------------------------------------------------------------------


def test_fxquant_refuses_a_quantized_model_but_takes_a_float_state_one():
    x = torch.randn(2, 10)
    qmodel = convert_to_real_quant(nn.Sequential(nn.Linear(10, 4)))
    with pytest.raises(AlreadyQuantizedError):
        fxquant.quantize(qmodel, (x,))
    float_state = nn.Sequential(RealQuantizeLinear(10, 4))
    gm = fxquant.quantize(float_state, (x,))
    assert int8_keys(gm)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
def test_to_float_model_maps_back_to_the_same_codes(mlp, symmetric, per_channel):
    qmodel = convert_to_real_quant(mlp, symmetric=symmetric, per_channel=per_channel)
    snapshot = {k: v.clone() for k, v in qmodel.state_dict().items()}
    float_model = to_float_model(qmodel)
    assert all(torch.equal(snapshot[k], v) for k, v in qmodel.state_dict().items())
    assert [type(m) for m in float_model] == [nn.Linear, nn.ReLU, nn.Linear]
    config = quant_config_of(qmodel)
    assert config == fxquant.QuantConfig(
        weight_bits=8,
        weight_symmetric=symmetric,
        weight_granularity="per_channel" if per_channel else "per_tensor",
        reduce_range=True,  # 8-bit weights: 7-bit activations keep the kernel exact
        pair_safe_weights=False,  # the seed layers use plain min-max scales
    )
    x = torch.rand(4, 784)
    gm = fxquant.quantize(float_model, (x,), config=config)
    codes = gm.state_dict()
    assert torch.equal(codes["fxq.0_w_int8"], qmodel[0].w_int8)
    assert torch.equal(codes["fxq.2_w_int8"], qmodel[2].w_int8)
    assert torch.equal(codes["fxq.0_w_zp"], qmodel[0].w_zp)
    torch.testing.assert_close(codes["fxq.0_w_scale"], qmodel[0].w_scale, rtol=1e-6, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), qmodel(x), rtol=1e-5, atol=1e-5)
