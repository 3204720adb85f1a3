"""Quantization with gradients: the straight-through estimator, and the seed document's
``symmetric_quantize`` built on it. The rounding itself is :mod:`fxquant.numerics`'s."""

from __future__ import annotations

from typing import Any

import torch

from . import numerics


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        return quantized.view_as(quantized)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def straight_through(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Exactly ``quantized`` in the forward pass; in the backward pass the gradient goes to
    ``x`` unchanged, as if the rounding were the identity (straight-through estimator)."""
    return _StraightThrough.apply(x, quantized.detach())


def symmetric_quantize(x: torch.Tensor, bits: int = 8, axis: int | None = None) -> torch.Tensor:
    """Round ``x`` to a symmetric ``bits``-bit grid (quantize then dequantize), one scale for
    the tensor or one per slice along ``axis``; gradients pass straight through.

    The grid is the one fxquant's int8 weights use: ``scale = max|x| / (2^(bits-1) - 1)``, codes
    in ``[-(2^(bits-1)-1), 2^(bits-1)-1]``, round half to even.
    """
    lo, hi = numerics.reduce_min_max(x, axis)
    scale, zero_point = numerics.weight_qparams(lo, hi, bits, symmetric=True)
    if axis is None:
        scale, zero_point = scale.reshape(()), zero_point.reshape(())
    qrange = numerics.weight_qrange(bits, symmetric=True)
    with torch.no_grad():
        quantized = numerics.fake_quantize(x.detach(), scale, zero_point, qrange, axis=axis)
    return straight_through(x, quantized)
