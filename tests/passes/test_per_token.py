"""Per-token dynamic activations: lowering and fusion golden graphs, kernel parity with the
reference in quantization steps, and the accuracy they buy on rows of different magnitudes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxquant
from fxquant import QuantConfig, numerics, ops, passes
from fxquant.kernels import reference
from tests.passes.accuracy_models import calls

PT = QuantConfig(mode="dynamic", activation_granularity="per_token")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(16, 16, 1)
        self.q = nn.Linear(16, 32)
        self.k = nn.Linear(16, 32)

    def forward(self, x):
        x = x + self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.q(x) * self.k(x)


def _x(seed=0):
    g = torch.Generator().manual_seed(seed)
    # Rows of very different magnitudes: what per-tensor ranges handle worst.
    return (torch.randn(2, 9, 16, generator=g) * torch.logspace(-2, 1, 9).view(1, 9, 1),)


def test_linears_quantize_their_input_per_token_convs_per_tensor():
    gm = fxquant.prepare(Net().eval(), _x(), PT)
    ctx = passes.PassContext(config=PT)
    upto = passes.CONVERT[: passes.CONVERT.index(passes.LOWER_TO_INT8) + 1]
    gm = passes.run_passes(gm, upto, ctx)
    (pt,) = calls(gm, ops.fake_quantize_dynamic_per_token)  # shared by q and k
    assert {u.meta["fxquant"]["source"] for u in pt.users} == {"q", "k"}
    (per_tensor,) = calls(gm, ops.fake_quantize_dynamic)
    assert [u.meta["fxquant"]["source"] for u in per_tensor.users] == ["conv"]
    fused = fxquant.portable(fxquant.quantize(Net().eval(), _x(), config=PT))
    assert len(calls(fused, ops.linear_dynamic_per_token)) == 2
    assert not calls(fused, ops.linear_dynamic)


def test_per_token_layers_run_packed_and_match_their_fxquant_op():
    from fxquant.passes.runtime_calls import (
        linear_dynamic_per_token_packed,
        linear_dynamic_per_token_vnni,
    )

    q = fxquant.quantize(Net().eval(), _x(), config=PT)
    # Not a model that generates: fbgemm between the row scalings (the VNNI kernel, which
    # quantizes rows inside, is packed for causal LMs: tests/passes/test_decode_packing.py).
    vnni = False
    runtime = linear_dynamic_per_token_vnni if vnni else linear_dynamic_per_token_packed
    assert len(calls(q, runtime)) == 2
    assert not calls(q, ops.linear_dynamic_per_token)
    kernels = {r.name: r.kernel for r in fxquant.record_of(q).layers}
    assert "packed once" in kernels["q"] and "per_token" in kernels["q"], kernels
    x = _x(1)
    with torch.no_grad():
        fast, twin = q(*x), fxquant.portable(q)(*x)
    if vnni:  # the same quantized GEMM, summed in another order
        torch.testing.assert_close(fast, twin, rtol=1e-5, atol=1e-5)
    else:  # same GEMM, same packing: the twin's fast path gives the same bits
        assert torch.equal(fast, twin)


def test_per_token_packed_state_dict_round_trips_and_load_repacks():
    q = fxquant.quantize(Net().eval(), _x(), config=PT)
    state = q.state_dict()
    assert any(k.endswith("_w_int8") for k in state)  # codes rebuilt from the packed weight
    other = fxquant.quantize(Net().eval(), _x(3), config=PT)  # another model's weights
    x = _x(1)
    with torch.no_grad():
        before = other(*x)
        other.load_state_dict(state)
        after = other(*x)
    assert not torch.equal(before, after)
    with torch.no_grad():
        assert torch.equal(after, q(*x))


def test_per_token_is_an_option_not_for_static_or_weight_only():
    assert not QuantConfig(mode="static").per_token_activations
    assert PT.per_token_activations
    for mode in ("static", "weight_only"):
        with pytest.raises(fxquant.ConfigError, match="per_token"):
            QuantConfig(mode=mode, activation_granularity="per_token")


def test_reference_scales_each_row_by_its_abs_max():
    x = torch.tensor([[1.0, -4.0, 2.0], [0.0, 0.0, 0.0], [0.01, 0.02, -0.005]])
    tiny = torch.finfo(torch.float32).tiny
    assert torch.equal(reference.token_scales(x).flatten(), torch.tensor([4.0, tiny, 0.02]))
    y = reference.fake_quantize_dynamic_per_token(x, False)
    assert torch.equal(y[1], torch.zeros(3))
    # Each row is quantized on (its own range / abs-max) * abs-max: error <= half a step of it.
    for row, out in zip(x, y, strict=True):
        r = float(row.abs().max()) or 1.0
        scale, _ = numerics.activation_qparams(float((x / reference.token_scales(x)).min()),
                                               float((x / reference.token_scales(x)).max()),
                                               False)
        assert float((row - out).abs().max()) <= r * scale / 2 + 1e-7


@pytest.mark.parametrize("bias", [True, False])
def test_fast_kernel_matches_reference_within_one_accumulator_step(bias):
    torch.manual_seed(0)
    w = torch.randn(24, 16) * 0.1
    qw = numerics.quantize_weight(w, 8, True, True, pair_safe=True)
    b = torch.randn(24) if bias else None
    x = _x()[0]
    fast = ops.linear_dynamic_per_token(x, qw.codes, qw.scale, qw.zero_point, b, False)
    with ops.reference_kernels():
        ref = ops.linear_dynamic_per_token(x, qw.codes, qw.scale, qw.zero_point, b, False)
    # One accumulator step of each output: row abs-max * x-scale (of [-1, 1]) * w-scale.
    step = reference.token_scales(x) * (2.0 / 255) * qw.scale
    assert bool(((fast - ref).abs() <= 1.01 * step + 1e-6).all())


def test_per_token_is_more_accurate_on_rows_of_different_magnitudes():
    model = nn.Sequential(nn.Linear(16, 32)).eval()
    x = _x(seed=3)[0]

    def row_error(out, ref):  # mean over rows of each row's relative error
        return float(((out - ref).norm(dim=-1) / ref.norm(dim=-1)).mean())

    with torch.no_grad():
        ref = model(x)
        err = {g: row_error(fxquant.quantize(model, _x(), config=QuantConfig(
            activation_granularity=g))(x), ref) for g in ("per_tensor", "per_token")}
    assert err["per_token"] < 0.5 * err["per_tensor"], err
