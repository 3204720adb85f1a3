"""fxquant's dynamic int8 x int8 linear on VNNI panels (``fxquant_cpu::linear_int8_dynamic``).

Activations are quantized per tensor from their own range exactly as the reference kernel does
(:func:`fxquant.numerics.activation_qparams`), weights are int8 per output channel with
zero-point 0 in :func:`~fxquant.kernels.packing.block_int8_vnni`'s layout, and the product is
exact in int32 (``vpdpbusd`` has no 16-bit intermediate, so no pair-safe scales are needed). Built
with the weight-only extension (:mod:`fxquant.kernels.weight_only`); ``pack_weights`` uses it in
place of fbgemm where :func:`available` (AVX-512 VNNI): at decode it streams the weight with a
software prefetch ahead in every panel, which fbgemm's kernel does not.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import weight_only
from .packing import block_int8_vnni, unblock_int8_vnni
from .reference import token_scales


class VnniLinear(NamedTuple):
    """What the runtime graph holds for one layer (one plain attribute)."""

    codes: torch.Tensor  # int8 [ceil(N / 16), ceil(K / 4), 16, 4]
    scale: torch.Tensor  # float32 [N]
    row_sum: torch.Tensor  # int32 [N]: the zero-point correction
    bias: torch.Tensor | None
    k: int


def available() -> bool:
    """Whether the VNNI kernel runs here (extension loaded, AVX-512 VNNI, AVX-512 selected)."""
    return weight_only.available() and bool(torch.ops.fxquant_cpu.dynamic_vnni())


def pack(codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> VnniLinear:
    """The layer's runtime form from its int8 codes ``[N, K]`` (zero-point 0)."""
    return VnniLinear(block_int8_vnni(codes), scale, _row_sums(codes), bias, codes.shape[1])


def _row_sums(codes: torch.Tensor, rows: int = 1024) -> torch.Tensor:
    """Each row's sum of codes, int32, a block of rows at a time: ``sum(dtype=int32)`` widens
    its whole input first (GPT-2's tied ``lm_head``: a 154 MB temporary at load)."""
    sums = codes.new_empty(codes.shape[0], dtype=torch.int32)
    for r in range(0, codes.shape[0], rows):
        torch.sum(codes[r:r + rows], 1, dtype=torch.int32, out=sums[r:r + rows])
    return sums


def unpack(layer: VnniLinear) -> torch.Tensor:
    """The int8 codes ``[N, K]`` the layer was packed from (exact)."""
    return unblock_int8_vnni(layer.codes, layer.scale.shape[0], layer.k)


def linear(x: torch.Tensor, layer: VnniLinear, reduce_range: bool, relu: bool = False,
           per_token: bool = False) -> torch.Tensor:
    """``relu?(dequant(quant(x)) @ dequant(W).T + bias)`` with x quantized per tensor, or per token
    (``reference.fake_quantize_dynamic_per_token``: rows divided by their abs-max, quantized per
    tensor, the kernel multiplying each row back in its epilogue)."""
    return torch.ops.fxquant_cpu.linear_int8_dynamic(
        x, layer.codes, layer.scale, layer.row_sum, layer.bias, layer.k, reduce_range, relu,
        per_token)


def divide_rows_by_absmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x / r, r)`` with ``r = reference.token_scales(x)`` (each row's abs-max, ``[..., 1]``):
    the per-token scaling before fbgemm's GEMM, in one C++ op (two reads of each row) where the
    extension is loaded; bit-identical to the ATen form it replaces."""
    if weight_only.available() and x.dtype == torch.float32:
        return torch.ops.fxquant_cpu.divide_rows_by_absmax(x)
    r = token_scales(x)
    return x / r, r


def scale_rows_add_bias_(y: torch.Tensor, r: torch.Tensor,
                         bias: torch.Tensor | None) -> torch.Tensor:
    """``y.mul_(r).add_(bias)`` in place in one C++ pass (two roundings, as ATen)."""
    if weight_only.available() and y.is_contiguous() and r.is_contiguous():
        return torch.ops.fxquant_cpu.scale_rows_add_bias_(y, r, bias)
    y.mul_(r)
    return y if bias is None else y.add_(bias)
