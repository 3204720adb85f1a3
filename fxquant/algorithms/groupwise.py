"""Group-wise weights: one scale (and zero-point) per ``group_size`` consecutive input channels of
each output row, with the storage layout of fxquant's weight-only kernels.

Layout (the same as :mod:`fxquant.kernels.packing` and ONNX Runtime's ``MatMulNBits``), for a
weight ``[N, K]`` and ``G = K / group_size`` groups per row:

* codes are **unsigned**, uint8 in ``0 .. 2**bits - 1``; ``w' = (q - zero_point) * scale``;
* ``scale`` float32 ``[N, G]``, ``zero_point`` uint8 ``[N, G]``;
* the math is :mod:`fxquant.numerics` (round half to even, its clamps and zero-range rule) on the
  signed range, shifted by ``2**(bits - 1)``: symmetric codes are stored as ``code + 2**(bits-1)``
  with ``zero_point = 2**(bits-1)`` (8 for 4 bits);
* codes of at most 4 bits are stored two per byte, ``[N, K / 2]`` uint8, the even column in the low
  nibble: ``packed[n, i] = q[n, 2i] | q[n, 2i + 1] << 4``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import numerics


@dataclass(frozen=True)
class GroupedWeight:
    """A weight quantized per group of ``group_size`` input channels (codes unpacked)."""

    codes: torch.Tensor  # uint8 [N, K], 0 .. 2**bits - 1
    scale: torch.Tensor  # float32 [N, K / group_size]
    zero_point: torch.Tensor  # uint8 [N, K / group_size]
    group_size: int
    bits: int

    def dequantize(self) -> torch.Tensor:
        return dequantize_groupwise(self.codes, self.scale, self.zero_point, self.group_size)

    @property
    def packed(self) -> bool:
        return self.bits <= 4

    def stored_codes(self) -> torch.Tensor:
        """What the model stores: two codes per byte for 4 bits or fewer, else one per byte."""
        return pack_int4(self.codes) if self.packed else self.codes


def offset(bits: int) -> int:
    """Signed code + offset = stored unsigned code."""
    return 2 ** (bits - 1)


def _groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    n, k = w.shape
    if group_size <= 0 or k % group_size:
        raise ValueError(f"K={k} must be a positive multiple of group_size={group_size}")
    return w.reshape(n, k // group_size, group_size)


def groupwise_qparams(
    w: torch.Tensor, bits: int, symmetric: bool, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale ``[N, G]`` (float32) and **signed** zero-point ``[N, G]`` (int32) per group."""
    lo, hi = torch.aminmax(_groups(w.detach().float(), group_size), dim=-1)
    scale, zero_point = numerics.weight_qparams(lo, hi, bits, symmetric)
    return scale.contiguous(), zero_point.contiguous()


def expand_groups(params: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[N, G]`` per-group parameters as ``[N, G * group_size]``: one per column."""
    return params.repeat_interleave(group_size, dim=1)


def from_signed(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int,
                group_size: int) -> GroupedWeight:
    """The stored (unsigned) form of signed codes and zero-points."""
    shift = offset(bits)
    return GroupedWeight((codes.to(torch.int16) + shift).to(torch.uint8).contiguous(),
                         scale.float().contiguous(),
                         (zero_point.to(torch.int16) + shift).to(torch.uint8).contiguous(),
                         group_size, bits)


def quantize_groupwise(w: torch.Tensor, bits: int, group_size: int, symmetric: bool
                       ) -> GroupedWeight:
    """Round-to-nearest group-wise quantization: every element within half a step of its
    group's grid."""
    w = w.detach().float()
    scale, zero_point = groupwise_qparams(w, bits, symmetric, group_size)
    qr = numerics.weight_qrange(bits, symmetric)
    codes = numerics.quantize(_groups(w, group_size), scale.unsqueeze(-1),
                              zero_point.unsqueeze(-1), qr, torch.int16)
    return from_signed(codes.reshape(w.shape), scale, zero_point, bits, group_size)


def dequantize_groupwise(
    codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, group_size: int
) -> torch.Tensor:
    """float32 ``[N, K]``: ``(codes - zero_point) * scale`` per group (codes unpacked)."""
    q = _groups(codes, group_size)
    w = numerics.dequantize(q, scale.unsqueeze(-1), zero_point.unsqueeze(-1))
    return w.reshape(codes.shape)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., K]`` codes in 0..15 to uint8 ``[..., K / 2]``, even k in the low nibble."""
    if codes.dtype != torch.uint8 or codes.shape[-1] % 2:
        raise ValueError(f"pack_int4 takes uint8 codes with an even last dimension, got "
                         f"{codes.dtype} {tuple(codes.shape)}")
    if codes.numel() and int(codes.max()) > 15:
        raise ValueError(f"4-bit codes must be in 0..15, got a code {int(codes.max())}")
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_int4`."""
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).flatten(-2)


def stored_to_codes(stored: torch.Tensor, columns: int) -> torch.Tensor:
    """Unpacked codes ``[N, columns]`` from what a model stores (packed when half as wide)."""
    return unpack_int4(stored) if stored.shape[-1] * 2 == columns else stored
