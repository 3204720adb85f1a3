"""The grid a weight is quantized to, as one value the algorithms share.

A :class:`WeightScheme` says bits, symmetry and granularity (per output channel, per tensor, or per
group of input channels). Round-to-nearest, AWQ's search and GPTQ's column-by-column rounding all
ask it for the same things: the parameters of a weight, those parameters per column, the codes of
a weight under given parameters, and the stored result. Per-channel and per-tensor parameters come
from :func:`fxquant.numerics.quantize_weight` (pair-safe scales included), group-wise ones from
:mod:`.groupwise`, so the algorithms never define a scale of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import numerics
from .groupwise import (
    GroupedWeight,
    expand_groups,
    from_signed,
    groupwise_qparams,
    quantize_groupwise,
)

Quantized = numerics.QuantizedWeight | GroupedWeight


@dataclass(frozen=True)
class WeightScheme:
    """How one weight is quantized: bits, symmetry, per channel or per group, and options."""
    bits: int
    symmetric: bool
    per_channel: bool = True
    group_size: int | None = None  # set: one scale per group of input channels
    pair_safe: bool = False  # AVX2-saturation-safe per-channel scales (numerics.pair_safe_scale)
    clip_search: bool = False  # group ranges shrunk for the least rounding error (GPTQ's "mse")

    @property
    def qrange(self) -> numerics.QRange:
        return numerics.weight_qrange(self.bits, self.symmetric)

    def params(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and signed zero-point of ``w`` [N, K]: ``[N, K / group_size]`` per group, else
        ``[N]``."""
        if self.group_size:
            return groupwise_qparams(w, self.bits, self.symmetric, self.group_size,
                                     self.clip_search)
        qw = numerics.quantize_weight(w, self.bits, self.symmetric, self.per_channel,
                                      pair_safe=self.pair_safe)
        return qw.scale, qw.zero_point

    def per_column(self, params: torch.Tensor, columns: int) -> torch.Tensor:
        """Parameters ``[N, G]`` or ``[N]`` as float ``[N, K]``: the value for every weight."""
        p = params.float()
        if self.group_size:
            return expand_groups(p, self.group_size)
        return p.unsqueeze(1).expand(-1, columns)

    def codes(self, w: torch.Tensor, scale_cols: torch.Tensor, zp_cols: torch.Tensor
              ) -> torch.Tensor:
        """Codes (float, integral) of ``w`` under per-column parameters of the same shape."""
        qr = self.qrange
        return torch.clamp(torch.round(w / scale_cols) + zp_cols, qr.qmin, qr.qmax)

    def assemble(self, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
                 ) -> Quantized:
        """The stored form of signed ``codes`` [N, K] with the parameters :meth:`params`
        returned."""
        if self.group_size:
            return from_signed(codes, scale, zero_point, self.bits, self.group_size)
        return numerics.QuantizedWeight(codes.to(torch.int8).contiguous(), scale,
                                        zero_point.to(torch.int32), 0)

    def quantize(self, w: torch.Tensor) -> Quantized:
        """Round-to-nearest."""
        if self.group_size:
            return quantize_groupwise(w, self.bits, self.group_size, self.symmetric)
        return numerics.quantize_weight(w, self.bits, self.symmetric, self.per_channel,
                                        pair_safe=self.pair_safe)

    def fake_quantize(self, w: torch.Tensor) -> torch.Tensor:
        """What round-to-nearest makes of ``w``, in float."""
        return self.quantize(w).dequantize()
