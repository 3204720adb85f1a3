"""Group-wise weights as the algorithms and passes use them: one scale (and zero-point) per
``group_size`` consecutive input channels of each output row.

The numerics and the packing are :mod:`fxquant.kernels.packing`'s (the weight-only kernels'
layout); this module adds the record the passes carry (:class:`GroupedWeight`) and the signed
view GPTQ works in. Layout (also ONNX Runtime's ``MatMulNBits``), for a weight ``[N, K]`` and
``G = K / group_size`` groups per row:

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
from ..kernels import packing
from ..kernels.packing import dequantize_groupwise, pack_int4, unpack_int4

__all__ = [
    "GroupedWeight",
    "dequantize_groupwise",
    "expand_groups",
    "from_signed",
    "groupwise_qparams",
    "pack_int4",
    "quantize_groupwise",
    "stored_to_codes",
    "unpack_int4",
]


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
        if not self.packed:
            return self.codes
        if self.codes.is_meta:  # a structural replay (fxquant.load): shapes only
            n, k = self.codes.shape
            return torch.empty((n, k // 2), dtype=torch.uint8, device="meta")
        return pack_int4(self.codes)


def offset(bits: int) -> int:
    """Signed code + offset = stored unsigned code."""
    return 2 ** (bits - 1)


def _groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    n, k = w.shape
    if group_size <= 0 or k % group_size:
        raise ValueError(f"K={k} must be a positive multiple of group_size={group_size}")
    return w.reshape(n, k // group_size, group_size)


# Range shrink factors tried by the clip search (GPTQ's reference code, ``mse=True``, tries a
# finer grid; six steps recover most of its gain here).
CLIP_FACTORS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


def groupwise_qparams(
    w: torch.Tensor, bits: int, symmetric: bool, group_size: int, clip_search: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale ``[N, G]`` (float32) and **signed** zero-point ``[N, G]`` (int32) per group.

    ``clip_search``: each group's range is shrunk by the factor in ``CLIP_FACTORS`` that gives the
    smallest squared rounding error of the group (clipping a rare extreme value for a finer grid
    elsewhere); otherwise the full min-max range.
    """
    groups = _groups(w.detach().float(), group_size)
    lo, hi = torch.aminmax(groups, dim=-1)
    scale, zero_point = numerics.weight_qparams(lo, hi, bits, symmetric)
    if not clip_search:
        return scale.contiguous(), zero_point.contiguous()
    qr = numerics.weight_qrange(bits, symmetric)
    best_err = None
    for factor in CLIP_FACTORS:
        s, z = numerics.weight_qparams(lo * factor, hi * factor, bits, symmetric)
        s3, z3 = s.unsqueeze(-1), z.unsqueeze(-1)
        q = torch.clamp(torch.round(groups / s3) + z3, qr.qmin, qr.qmax)
        err = ((q - z3) * s3 - groups).pow_(2).sum(-1)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        scale = torch.where(better, s, scale)
        zero_point = torch.where(better, z, zero_point)
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
    """Round-to-nearest group-wise quantization (:func:`fxquant.kernels.packing.
    quantize_groupwise`): every element within half a step of its group's grid."""
    q = packing.quantize_groupwise(w, bits, group_size, symmetric)
    return GroupedWeight(q.codes, q.scale, q.zero_point, group_size, bits)


def stored_to_codes(stored: torch.Tensor, columns: int) -> torch.Tensor:
    """Unpacked codes ``[N, columns]`` from what a model stores (packed when half as wide)."""
    return unpack_int4(stored) if stored.shape[-1] * 2 == columns else stored
