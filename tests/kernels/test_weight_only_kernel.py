"""The weight-only C++ kernels (fxquant_cpu ops) against their PyTorch specification.

The kernel and the reference compute the same sum over k of x * w in different orders, so they may
differ only by float32 rounding. A K-term fp32 sum is off by at most ~K * eps * sum |terms| (worst
case) and ~sqrt(K) * eps * sum |terms| in practice; the bound used here, 1e-5 * sum_k |x_k w_nk|
(about 84 ulps of that sum), holds for any summation order up to K of a few thousand, while one
wrong code, nibble, zero-point or dropped k moves an output by ~sum / K >= 1e-3 of it and fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fxquant import cpu
from fxquant.kernels import packing
from fxquant.kernels import weight_only as wo

REL = 1e-5
ROOT = Path(__file__).resolve().parents[2]
M_VALUES = (1, 2, 3, 5, 8, 33, 128)
# (K, N); K=13 and 771 leave a tail after the 8-wide loop
INT8_SHAPES = ((64, 48), (13, 7), (771, 130))
INT4_SHAPES = ((128, 40, 32), (384, 7, 64), (768, 130, 128))  # (K, N, group_size)

requires_extension = pytest.mark.skipif(
    not wo.available(), reason=f"weight-only extension not built: {wo.status().detail}"
)


def _assert_matches(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None):
    """|y - exact| <= REL * (sum_k |x_k w_nk| + |b_n|) for every output, exact in float64."""
    x64, w64 = x.double().reshape(-1, x.shape[-1]), w.double()
    ref = F.linear(x64, w64, None if bias is None else bias.double())
    magnitude = x64.abs() @ w64.abs().T + (0 if bias is None else bias.double().abs())
    err = (y.double().reshape(ref.shape) - ref).abs()
    assert y.dtype == torch.float32 and y.shape == (*x.shape[:-1], w.shape[0])
    worst = float((err / (REL * magnitude + 1e-30)).max()) if err.numel() else 0.0
    assert worst <= 1.0, f"error reaches {worst:.2f}x the float32 bound"


def _int8_weight(k: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    codes = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    scale = torch.rand(n) * 0.02 + 1e-3
    return codes, scale


def _int4_weight(k: int, n: int, group: int):
    """Random codes and zero-points over the whole 0..15 range (asymmetric, worst for nibbles)."""
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    scale = torch.rand(n, k // group) * 0.02 + 1e-3
    zero_point = torch.randint(0, 16, (n, k // group), dtype=torch.uint8)
    return codes, scale, zero_point


_AVX512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


def _has_avx512() -> bool:
    return _AVX512.issubset(cpu.flags())


def _use_isa(isa: str) -> str:
    """Run the int8 kernels on ``isa``; where the CPU lacks AVX-512, check that it is refused and
    use the AVX2 kernels, which must then serve the case. Returns the previous choice."""
    if isa == "avx512" and not _has_avx512():
        with pytest.raises(ValueError, match="lacks AVX-512"):
            wo.kernel_isa("avx512")
        isa = "avx2"
    return wo.kernel_isa(isa)


@pytest.fixture(params=["rows avx2", "rows avx512", "tiled"])
def path(request):
    """Force the row kernels (on one instruction set) or the tiled-BLAS path for every M
    (restored afterwards)."""
    if not wo.available():
        pytest.skip(f"weight-only extension not built: {wo.status().detail}")
    isa = request.param.split()[-1] if request.param.startswith("rows") else wo.kernel_isa()
    previous_isa = _use_isa(isa)
    rows = 0 if request.param == "tiled" else 1 << 30
    previous = {bits: wo.tile_min_rows(bits, rows) for bits in (4, 8)}
    yield request.param
    for bits, value in previous.items():
        wo.tile_min_rows(bits, value)
    wo.kernel_isa(previous_isa)


@requires_extension
def test_int8_kernels_run_on_avx512_where_the_cpu_has_it():
    chosen = os.environ.get("FXQUANT_KERNEL_ISA")  # a run forcing AVX2 on an AVX-512 CPU
    assert wo.kernel_isa() == (chosen or ("avx512" if _has_avx512() else "avx2"))
    with pytest.raises(ValueError, match="'avx2' or 'avx512'"):
        wo.kernel_isa("sse2")


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("m", M_VALUES)
@pytest.mark.parametrize(("k", "n"), INT8_SHAPES)
def test_int8_kernel_matches_reference(path, k, n, m, with_bias):
    codes, scale = _int8_weight(k, n)
    bias = torch.randn(n) if with_bias else None
    x = torch.randn(m, k)
    y = torch.ops.fxquant_cpu.linear_int8_wo(x, codes, scale, bias)
    _assert_matches(y, x, codes.float() * scale[:, None], bias)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("m", M_VALUES)
@pytest.mark.parametrize(("k", "n", "group"), INT4_SHAPES)
def test_int4_kernel_matches_reference(path, k, n, group, m, with_bias):
    codes, scale, zero_point = _int4_weight(k, n, group)
    bias = torch.randn(n) if with_bias else None
    x = torch.randn(m, k)
    packed = packing.pack_int4(codes)
    y = torch.ops.fxquant_cpu.linear_int4_wo(x, packed, scale, zero_point, group, bias)
    _assert_matches(y, x, packing.dequantize_groupwise(codes, scale, zero_point, group), bias)


@requires_extension
@pytest.mark.parametrize("m", [1, 40])  # the shipped thresholds: row kernels, then tiled BLAS
def test_int4_kernel_on_a_quantized_weight_with_large_mean_activations(m):
    """Symmetric codes (zp 8) and activations with a large common offset: the kernel takes the
    zero-point out as zp * sum(x) per group, which must not cancel badly."""
    w = torch.randn(96, 256)
    q = packing.quantize_groupwise(w, 4, 64, symmetric=True)
    x = torch.randn(m, 256) + 20.0
    y = wo.linear_int4(x, packing.pack_int4(q.codes), q.scale, q.zero_point, 64)
    _assert_matches(y, x, packing.dequantize_groupwise(*q, 64), None)


@requires_extension
def test_leading_dimensions_and_non_contiguous_input():
    codes, scale = _int8_weight(40, 24)
    x3 = torch.randn(2, 5, 40)
    y3 = wo.linear_int8(x3, codes, scale, None)
    assert y3.shape == (2, 5, 24)
    assert torch.equal(y3.reshape(10, 24), wo.linear_int8(x3.reshape(10, 40), codes, scale))
    xt = torch.randn(40, 6).T  # [6, 40], not contiguous
    _assert_matches(wo.linear_int8(xt, codes, scale), xt, codes.float() * scale[:, None], None)
    empty = wo.linear_int8(torch.randn(0, 3, 40), codes, scale)
    assert empty.shape == (0, 3, 24)


def _int4_args(k=256, n=16, group=64):
    codes, scale, zero_point = _int4_weight(k, n, group)
    return packing.pack_int4(codes), scale, zero_point, group


@pytest.mark.parametrize("use_extension", [True, False])
def test_bad_arguments_raise_value_error(monkeypatch, use_extension):
    if use_extension and not wo.available():
        pytest.skip("weight-only extension not built")
    monkeypatch.setattr(wo, "available", lambda: use_extension)
    codes, scale = _int8_weight(32, 8)
    x = torch.randn(3, 32)
    with pytest.raises(ValueError, match="K"):
        wo.linear_int8(torch.randn(3, 31), codes, scale)
    with pytest.raises(ValueError, match="codes"):
        wo.linear_int8(x, codes.to(torch.int32), scale)
    with pytest.raises(ValueError, match="bias"):
        wo.linear_int8(x, codes, scale, torch.randn(9))
    packed, scale4, zp, group = _int4_args()
    x4 = torch.randn(2, 256)
    with pytest.raises(ValueError, match="group_size"):
        wo.linear_int4(x4, packed, scale4, zp, 48)
    with pytest.raises(ValueError, match="zero_point"):
        wo.linear_int4(x4, packed, scale4, zp.to(torch.int32), group)


def test_fallback_gives_the_kernels_results(monkeypatch):
    """With the extension reported unavailable, the PyTorch path computes the same function."""
    codes, scale = _int8_weight(200, 33)
    packed, scale4, zp, group = _int4_args(k=256, n=33, group=64)
    bias, x8, x4 = torch.randn(33), torch.randn(2, 3, 200), torch.randn(5, 256)
    kernel = (wo.linear_int8(x8, codes, scale, bias), wo.linear_int4(x4, packed, scale4, zp, group))
    monkeypatch.setattr(wo, "available", lambda: False)
    fallback8 = wo.linear_int8(x8, codes, scale, bias)
    fallback4 = wo.linear_int4(x4, packed, scale4, zp, group)
    w4 = packing.dequantize_groupwise(packing.unpack_int4(packed), scale4, zp, group)
    for y in (kernel[0], fallback8):
        _assert_matches(y, x8, codes.float() * scale[:, None], bias)
    for y in (kernel[1], fallback4):
        _assert_matches(y, x4, w4, None)


def test_fallback_dequantizes_in_blocks(monkeypatch):
    """The fallback never materializes the whole float weight: it works a block of rows at a
    time (shrunk here so that 100 rows take 7 blocks) and stitches the columns back in order."""
    monkeypatch.setattr(wo, "_FALLBACK_BLOCK_ELEMENTS", 16 * 64)
    monkeypatch.setattr(wo, "available", lambda: False)
    codes, scale = _int8_weight(64, 100)
    x, bias = torch.randn(4, 64), torch.randn(100)
    _assert_matches(wo.linear_int8(x, codes, scale, bias), x, codes.float() * scale[:, None], bias)


def test_inputs_that_need_a_gradient_take_the_differentiable_path():
    codes, scale = _int8_weight(16, 4)
    x = torch.randn(3, 16, requires_grad=True)
    wo.linear_int8(x, codes, scale).sum().backward()
    assert torch.allclose(x.grad, (codes.float() * scale[:, None]).sum(0).expand(3, 16))


def test_no_extension_variable_forces_the_fallback_and_says_so():
    code = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from fxquant.kernels import weight_only as wo\n"
        "print(wo.available())\n"
    )
    env = {**os.environ, "FXQUANT_NO_EXTENSION": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False"
    log = [line for line in done.stderr.splitlines() if "weight-only" in line]
    assert len(log) == 1 and "FXQUANT_NO_EXTENSION=1" in log[0] and "slower" in log[0]


def test_a_failing_compile_falls_back_with_the_reason(monkeypatch, tmp_path):
    if wo._toolchain_problem() is not None or wo._cpu_problem() is not None:
        pytest.skip("no toolchain to fail with")
    broken = tmp_path / "csrc"
    broken.mkdir()
    (broken / "broken.cpp").write_text("#error deliberately broken\n")
    monkeypatch.setattr(wo, "_CSRC", broken)
    monkeypatch.setenv("FXQUANT_BUILD_DIR", str(tmp_path / "build"))
    result = wo.build()
    assert not result.loaded
    assert "failed" in result.detail and "deliberately broken" in result.detail


def test_extension_builds_where_the_machine_supports_it():
    """A machine with AVX2 + FMA, a compiler and ninja must get the kernels, not a silent skip."""
    if wo._cpu_problem() is not None or wo._toolchain_problem() is not None:
        pytest.skip("this machine cannot build the extension")
    assert wo.available(), wo.status().detail


@requires_extension
def test_ops_trace_with_fake_tensors():
    codes, scale = _int8_weight(32, 8)
    packed, scale4, zp, group = _int4_args(k=64, n=8, group=32)
    torch.library.opcheck(torch.ops.fxquant_cpu.linear_int8_wo.default,
                          (torch.randn(2, 3, 32), codes, scale, torch.randn(8)))
    torch.library.opcheck(torch.ops.fxquant_cpu.linear_int4_wo.default,
                          (torch.randn(5, 64), packed, scale4, zp, group, None))

    class Linear4(torch.nn.Module):
        def forward(self, x):
            return wo.linear_int4(x, packed, scale4, zp, group)

    exported = torch.export.export(Linear4(), (torch.randn(3, 64),))
    targets = [node.target for node in exported.graph.nodes]
    assert torch.ops.fxquant_cpu.linear_int4_wo.default in targets


# --- the panel (blocked) layout ------------------------------------------------------------
# N = 7, 130, 50: partial last panels; K = 13 / 771 not multiples of 16; M covers every decode
# tile count (1..6 rows, then a tail), the change to the scratch kernel at 32, and its tails.
BLOCKED_M = (1, 2, 3, 4, 5, 6, 7, 13, 31, 32, 45)
BLOCKED_SHAPES = ((64, 48), (13, 7), (771, 130), (256, 50))


@pytest.fixture(params=["avx2", "avx512"])
def isa(request):
    """Run the blocked kernel on one instruction set (restored afterwards)."""
    if not wo.available():
        pytest.skip(f"weight-only extension not built: {wo.status().detail}")
    previous = _use_isa(request.param)
    yield request.param
    wo.kernel_isa(previous)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("m", BLOCKED_M)
@pytest.mark.parametrize(("k", "n"), BLOCKED_SHAPES)
def test_blocked_int8_kernel_matches_reference(isa, k, n, m, with_bias):
    codes, scale = _int8_weight(k, n)
    bias = torch.randn(n) if with_bias else None
    x = torch.randn(m, k)
    y = torch.ops.fxquant_cpu.linear_int8_wo_blocked(x, packing.block_int8(codes), scale, bias)
    _assert_matches(y, x, codes.float() * scale[:, None], bias)


def test_block_int8_round_trip_and_layout():
    codes, _ = _int8_weight(5, 21)
    blocked = packing.block_int8(codes)
    assert blocked.shape == (2, 5, 16) and blocked.dtype == torch.int8
    assert torch.equal(blocked[1, 3, 4], codes[20, 3])  # panel 1, k 3, lane 4 = channel 20
    assert not blocked[1, :, 5:].any()  # channels 21..31 do not exist: zeros
    assert torch.equal(packing.unblock_int8(blocked, 21), codes)
    with pytest.raises(ValueError, match="int8"):
        packing.block_int8(codes.float())


@requires_extension
def test_blocked_kernel_refuses_a_mismatched_layout():
    codes, scale = _int8_weight(32, 40)
    blocked = packing.block_int8(codes)
    with pytest.raises(ValueError, match="panels"):
        torch.ops.fxquant_cpu.linear_int8_wo_blocked(torch.randn(2, 32), blocked, scale[:16], None)
    with pytest.raises(ValueError, match="K=32"):
        torch.ops.fxquant_cpu.linear_int8_wo_blocked(torch.randn(2, 31), blocked, scale, None)
