"""Parity of the fast (fbgemm) kernels with the reference kernels, in quantization units."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant import cpu, numerics, ops
from fxquant.kernels import fbgemm, reference

OUT, IN = 24, 40
EPS32 = torch.finfo(torch.float32).eps


def _weight(symmetric: bool, per_channel: bool, bits: int = 8) -> numerics.QuantizedWeight:
    w = torch.randn(OUT, IN) * torch.logspace(-2, 0, OUT).unsqueeze(1)  # rows of varied range
    w[:, 0] += 0.3  # asymmetric rows get non-zero zero-points
    return numerics.quantize_weight(w, bits, symmetric, per_channel)


def _input(dims: int) -> torch.Tensor:
    shape = (7, IN) if dims == 2 else (2, 5, IN)
    return torch.randn(shape) * 2.0 + 0.5


def _both(op, *args) -> tuple[torch.Tensor, torch.Tensor]:
    """(fast, reference) outputs of ``op``; checks the fast path really applies."""
    x, codes = args[0], next(a for a in args if isinstance(a, torch.Tensor) and
                            a.dtype == torch.int8)
    assert fbgemm.available() and fbgemm.can_run(x, codes)
    fast = op(*args)
    with ops.reference_kernels():
        ref = op(*args)
    return fast, ref


def _int8_matmul_tolerance(x_scale: float, qw: numerics.QuantizedWeight, x: torch.Tensor,
                           ref: torch.Tensor) -> torch.Tensor:
    """Per-output bound on |fast - reference| for int8 x int8 kernels.

    Both kernels compute sum_k xq_k * w_jk with the same int8 weight; they may differ only in the
    activation codes xq: fbgemm multiplies by 1/scale where the reference divides, and chooses its
    dynamic parameters in its own float arithmetic, so a value near a rounding tie can land one
    code apart. One code is one activation step ``x_scale``, and it moves output j by
    ``x_scale * |w_jk|``; in the worst case every k flips, so
        |fast_j - ref_j| <= x_scale * sum_k |w_jk| = x_scale * scale_j * sum_k |q_jk - zp_j|,
    i.e. one activation step times the dequantized weight row's L1 norm. On top comes float32
    rounding of the reference's float matmul (a few ulps of the output's magnitude).
    A kernel that saturates (vpmaddubsw with 8-bit activations) or mis-reads a zero-point is off
    by many steps and fails this bound.
    """
    l1 = qw.dequantize().abs().sum(dim=1)
    float_slack = 64 * EPS32 * (x.abs().max() * l1 + ref.abs())
    return x_scale * l1 + float_slack


SCHEMES = pytest.mark.parametrize(
    ("symmetric", "per_channel"), [(True, True), (True, False), (False, True), (False, False)]
)
DIMS = pytest.mark.parametrize("dims", [2, 3])
BIAS = pytest.mark.parametrize("with_bias", [True, False])


@SCHEMES
@DIMS
@BIAS
def test_linear_dynamic_matches_reference(symmetric, per_channel, dims, with_bias):
    qw = _weight(symmetric, per_channel)
    x = _input(dims)
    bias = torch.randn(OUT) if with_bias else None
    fast, ref = _both(ops.linear_dynamic, x, qw.codes, qw.scale, qw.zero_point, bias, True)
    assert fast.shape == ref.shape == (*x.shape[:-1], OUT)
    lo, hi = torch.aminmax(x)
    x_scale, _ = numerics.activation_qparams(lo.item(), hi.item(), reduce_range=True)
    tol = _int8_matmul_tolerance(x_scale, qw, x, ref)
    assert bool(((fast - ref).abs() <= tol).all()), float(((fast - ref).abs() / tol).max())


@SCHEMES
@DIMS
@BIAS
def test_linear_static_matches_reference(symmetric, per_channel, dims, with_bias):
    qw = _weight(symmetric, per_channel)
    x = _input(dims)
    bias = torch.randn(OUT) if with_bias else None
    # A calibrated range narrower than this batch: some values clamp, in both kernels alike.
    lo, hi = torch.aminmax(x)
    x_scale, x_zp = numerics.activation_qparams(0.8 * lo.item(), 0.8 * hi.item(), True)
    fast, ref = _both(ops.linear_static, x, x_scale, x_zp, True, qw.codes, qw.scale,
                      qw.zero_point, bias)
    assert fast.shape == ref.shape == (*x.shape[:-1], OUT)
    tol = _int8_matmul_tolerance(x_scale, qw, x, ref)
    assert bool(((fast - ref).abs() <= tol).all()), float(((fast - ref).abs() / tol).max())


@SCHEMES
@DIMS
@BIAS
def test_linear_weight_only_matches_reference(symmetric, per_channel, dims, with_bias):
    qw = _weight(symmetric, per_channel)
    x = _input(dims)
    bias = torch.randn(OUT) if with_bias else None
    fast, ref = _both(ops.linear_weight_only, x, qw.codes, qw.scale, qw.zero_point, bias)
    assert fast.shape == ref.shape == (*x.shape[:-1], OUT)
    # The fast kernel carries the float activation as two 7-bit parts (~14 bits); relative to
    # the magnitude of the products it sums, it must agree to 1e-3 (measured: ~1e-4).
    magnitude = x.abs().reshape(-1, IN) @ qw.dequantize().abs().t()
    magnitude = magnitude.reshape(ref.shape)
    assert bool(((fast - ref).abs() <= 1e-3 * magnitude + 1e-6).all())
    assert float((fast - ref).norm() / ref.norm()) <= 1e-3


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("symmetric", [True, False])
def test_embedding_matches_float_embedding_of_dequantized_table(bits, symmetric):
    table = torch.randn(50, 16) * torch.logspace(-3, 1, 50).unsqueeze(1)
    table[3] = 0.0
    qw = numerics.quantize_weight(table, bits, symmetric, per_channel=True)
    indices = torch.tensor([[0, 3, 49, 3], [7, 7, 1, 2]])
    got = ops.embedding(indices, qw.codes, qw.scale, qw.zero_point)
    expected = F.embedding(indices, qw.dequantize())
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


def test_reduce_range_activation_codes_stay_in_7_bits():
    x = torch.randn(64) * 5
    lo, hi = torch.aminmax(x)
    scale, zp = numerics.activation_qparams(lo.item(), hi.item(), True)
    q = ops.quantize_activation(x, scale, zp, True)
    assert q.dtype == torch.uint8 and int(q.max()) <= 127
    assert torch.equal(ops.dequantize_activation(q, scale, zp),
                       numerics.dequantize(q, scale, zp))


def test_reference_kernels_context_nests_and_restores(monkeypatch):
    fast_calls: list[int] = []
    fast = fbgemm.linear_dynamic

    def counting(*args):
        fast_calls.append(1)
        return fast(*args)

    monkeypatch.setattr(fbgemm, "linear_dynamic", counting)
    qw = _weight(True, True)
    x = _input(2)
    with ops.reference_kernels():
        with ops.reference_kernels():
            pass
        inner = ops.linear_dynamic(x, qw.codes, qw.scale, qw.zero_point, None, False)
    assert fast_calls == []
    assert torch.equal(inner, F.linear(reference.fake_quantize_dynamic(x, False), qw.dequantize()))
    ops.linear_dynamic(x, qw.codes, qw.scale, qw.zero_point, None, False)
    assert fast_calls == [1]  # the fast path is back after the block


@pytest.mark.parametrize("op_name", ["linear_dynamic", "linear_static", "linear_weight_only"])
def test_packed_weight_is_rebuilt_after_in_place_change(op_name):
    qw = _weight(True, True)
    codes, scale, zp = qw.codes.clone(), qw.scale.clone(), qw.zero_point.clone()
    bias = torch.randn(OUT)
    x = _input(2)
    x_scale, x_zp = numerics.activation_qparams(x.min().item(), x.max().item(), True)

    def call() -> tuple[torch.Tensor, torch.Tensor]:
        if op_name == "linear_dynamic":
            return _both(ops.linear_dynamic, x, codes, scale, zp, bias, True)
        if op_name == "linear_static":
            return _both(ops.linear_static, x, x_scale, x_zp, True, codes, scale, zp, bias)
        return _both(ops.linear_weight_only, x, codes, scale, zp, bias)

    def close(fast: torch.Tensor, ref: torch.Tensor) -> bool:
        current = numerics.QuantizedWeight(codes, scale, zp, 0)
        return bool(((fast - ref).abs() <= _int8_matmul_tolerance(x_scale, current, x, ref)).all())

    fast0, ref0 = call()
    assert close(fast0, ref0)

    with torch.no_grad():
        codes[: OUT // 2].neg_()  # in place: same tensor object, new contents
    fast1, ref1 = call()
    assert not torch.allclose(ref1, ref0)
    assert close(fast1, ref1)

    with torch.no_grad():
        scale.mul_(2.0)
    fast2, ref2 = call()
    assert close(fast2, ref2) and not torch.allclose(fast2, fast1)


def test_load_state_dict_repacks_the_int8_weight():
    # The codes stay the source of truth: loading new ones re-packs the fast kernel's weight.
    model = nn.Sequential(nn.Linear(IN, OUT)).eval()
    x = _input(2)
    qmodel = fxquant.quantize(model, (x,))
    before = qmodel(x)
    state = qmodel.state_dict()
    codes = state["fxq.0_w_int8"]
    state["fxq.0_w_int8"] = torch.flip(codes, dims=[0])
    qmodel.load_state_dict(state)
    after = qmodel(x)
    assert torch.equal(qmodel.state_dict()["fxq.0_w_int8"], torch.flip(codes, dims=[0]))
    with ops.reference_kernels():
        expected = fxquant.portable(qmodel)(x)
    assert not torch.allclose(after, before)
    qw = numerics.QuantizedWeight(state["fxq.0_w_int8"], state["fxq.0_w_scale"],
                                  state["fxq.0_w_zp"], 0)
    x_scale, _ = numerics.activation_qparams(x.min().item(), x.max().item(), True)
    assert bool(((after - expected).abs() <= _int8_matmul_tolerance(x_scale, qw, x, expected))
                .all())


def test_packed_model_deepcopies_and_keeps_one_copy_of_its_weights():
    model = nn.Sequential(nn.Linear(IN, OUT)).eval()
    x = _input(3)
    qmodel = fxquant.quantize(model, (x,))
    assert "0_w_int8" not in dict(qmodel.fxq.named_buffers())  # only the packed copy in RAM
    twin = copy.deepcopy(qmodel)
    assert torch.equal(twin(x), qmodel(x))
    assert torch.equal(twin.state_dict()["fxq.0_w_int8"], qmodel.state_dict()["fxq.0_w_int8"])


def test_default_weights_cannot_saturate_the_fast_kernel():
    # Uniform weights (many large same-sign pairs) and activations whose codes sit near 255: the
    # worst case for vpmaddubsw. With pair-safe scales the fast kernel equals the exact reference.
    torch.manual_seed(0)
    w = torch.rand(64, 96) - 0.2
    qw = numerics.quantize_weight(w, 8, symmetric=True, per_channel=True, pair_safe=True)
    x = torch.rand(4, 96) * 5.0
    x[:, 0] = -0.01  # a sliver below zero: zero-point 0 or 1, codes of the rest near 255
    fast = ops.linear_dynamic(x, qw.codes, qw.scale, qw.zero_point, None, False)
    with ops.reference_kernels():
        ref = ops.linear_dynamic(x, qw.codes, qw.scale, qw.zero_point, None, False)
    x_scale, _ = numerics.activation_qparams(float(x.min()), float(x.max()), False)
    step = x_scale * (qw.codes.float().abs() * qw.scale[:, None]).sum(1)  # one activation step
    assert ((fast - ref).abs() <= step + 1e-4).all()
    # Without pair-safe scales the same layer saturates where fbgemm runs its AVX2 kernel (no
    # VNNI): the guard is what makes it exact there. With VNNI it is exact either way.
    plain = numerics.quantize_weight(w, 8, symmetric=True, per_channel=True)
    fast = ops.linear_dynamic(x, plain.codes, plain.scale, plain.zero_point, None, False)
    with ops.reference_kernels():
        ref = ops.linear_dynamic(x, plain.codes, plain.scale, plain.zero_point, None, False)
    if cpu.fbgemm_saturates():
        assert (fast - ref).abs().max() > 10 * step.max()
    else:
        plain_step = x_scale * (plain.codes.float().abs() * plain.scale[:, None]).sum(1)
        assert ((fast - ref).abs() <= plain_step + 1e-4).all()
