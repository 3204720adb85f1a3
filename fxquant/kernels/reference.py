"""Reference kernels: what each fxquant op means, written with the numerics module.

These materialise float weights and are slow on purpose: they are the specification the fast
kernels are tested against, and the fallback where no fast kernel applies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import numerics
from . import packing


def fake_quantize_dynamic(x: torch.Tensor, reduce_range: bool) -> torch.Tensor:
    """Quantize-dequantize ``x`` per tensor with parameters from its own range (dynamic mode)."""
    if x.numel() == 0:
        return x
    lo, hi = torch.aminmax(x.detach())
    scale, zp = numerics.activation_qparams(lo.item(), hi.item(), reduce_range)
    qr = numerics.activation_qrange(reduce_range)
    return numerics.fake_quantize(x, scale, zp, qr)


def fake_quantize_static(
    x: torch.Tensor, scale: float, zero_point: int, reduce_range: bool
) -> torch.Tensor:
    """Quantize-dequantize ``x`` with calibrated per-tensor parameters (static mode)."""
    return numerics.fake_quantize(x, scale, zero_point, numerics.activation_qrange(reduce_range))


def linear_weight_only(
    x: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``F.linear`` with a dequantized per-output-channel int8 weight: the ``linear_weight_only``
    op (``fbgemm.linear_weight_only`` is its fast kernel)."""
    weight = numerics.dequantize(codes, scale, zero_point, axis=0)
    return F.linear(x, weight, bias)


def linear_dynamic(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                   zero_point: torch.Tensor, bias: torch.Tensor | None,
                   reduce_range: bool) -> torch.Tensor:
    """The ``linear_dynamic`` op: the input fake-quantized from its own range, then the
    int8-weight linear."""
    xq = fake_quantize_dynamic(x, reduce_range)
    return linear_weight_only(xq, codes, scale, zero_point, bias)


def linear_static(x: torch.Tensor, x_scale: float, x_zero_point: int, reduce_range: bool,
                  codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """The ``linear_static`` op: the input fake-quantized with its calibrated scale and zero
    point, then the int8-weight linear."""
    xq = fake_quantize_static(x, x_scale, x_zero_point, reduce_range)
    return linear_weight_only(xq, codes, scale, zero_point, bias)


def embedding(indices: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
              zero_point: torch.Tensor) -> torch.Tensor:
    """Gather rows of an int8 table, then dequantize only the rows gathered."""
    rows = codes[indices].float()  # gathers int8 rows; the table is never converted whole
    return (rows - zero_point[indices].unsqueeze(-1)) * scale[indices].unsqueeze(-1)


def conv_int8_weight(
    x: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """``F.conv1d`` / ``F.conv2d`` (by the weight's rank) with a dequantized int8 weight."""
    weight = numerics.dequantize(codes, scale, zero_point, axis=0)
    conv = F.conv1d if codes.dim() == 3 else F.conv2d
    return conv(x, weight, bias, stride, padding, dilation, groups)


def conv_dynamic(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                 zero_point: torch.Tensor, bias: torch.Tensor | None, reduce_range: bool,
                 stride: list[int], padding: list[int], dilation: list[int], groups: int,
                 relu: bool) -> torch.Tensor:
    """The ``conv_dynamic`` op: ``conv_int8_weight`` on the input fake-quantized from its own
    range, with an optional fused ReLU."""
    y = conv_int8_weight(fake_quantize_dynamic(x, reduce_range), codes, scale, zero_point, bias,
                         stride, padding, dilation, groups)
    return torch.relu(y) if relu else y


def conv_static(x: torch.Tensor, x_scale: float, x_zero_point: int, reduce_range: bool,
                codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                bias: torch.Tensor | None, stride: list[int], padding: list[int],
                dilation: list[int], groups: int, relu: bool) -> torch.Tensor:
    """The ``conv_static`` op: ``conv_int8_weight`` on the input fake-quantized with its
    calibrated scale and zero point, with an optional fused ReLU."""
    xq = fake_quantize_static(x, x_scale, x_zero_point, reduce_range)
    y = conv_int8_weight(xq, codes, scale, zero_point, bias, stride, padding, dilation, groups)
    return torch.relu(y) if relu else y


# --- per-token dynamic activations and group-wise weights ------------------------------------


_TINY = torch.finfo(torch.float32).tiny


def token_scales(x: torch.Tensor) -> torch.Tensor:
    """Each row's (last axis) abs-max, ``[..., 1]``, floored at the smallest normal float (an
    all-zero row stays all zero: 0 / tiny = 0)."""
    x = x.detach()
    # Two reductions without a temporary: ~10x faster than vector_norm(ord=inf) here.
    r = torch.maximum(x.amax(dim=-1, keepdim=True), x.amin(dim=-1, keepdim=True).neg_())
    return r.clamp_min_(_TINY)


def fake_quantize_dynamic_per_token(x: torch.Tensor, reduce_range: bool) -> torch.Tensor:
    """Per-token dynamic quantization: every row is divided by its own abs-max, the result is
    quantized per tensor from its range (so every row uses the whole code range), and the rows
    are scaled back."""
    if x.numel() == 0:
        return x
    r = token_scales(x)
    return fake_quantize_dynamic(x / r, reduce_range) * r


def linear_dynamic_per_token(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                             zero_point: torch.Tensor, bias: torch.Tensor | None,
                             reduce_range: bool) -> torch.Tensor:
    """The ``linear_dynamic_per_token`` op: each row (token) of the input fake-quantized from
    its own range, then the int8-weight linear."""
    xq = fake_quantize_dynamic_per_token(x, reduce_range)
    return linear_weight_only(xq, codes, scale, zero_point, bias)


def dequantize_weight_grouped(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                              group_size: int) -> torch.Tensor:
    """Stored group-wise codes (packed uint8 or int8) to the float32 weight ``[N, K]``."""
    columns = scale.shape[1] * group_size
    q = packing.unpack_int4(codes) if codes.shape[1] * 2 == columns else codes
    return packing.dequantize_groupwise(q, scale, zero_point, group_size)


def linear_weight_only_grouped(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                               zero_point: torch.Tensor, bias: torch.Tensor | None,
                               group_size: int) -> torch.Tensor:
    """``F.linear`` with a dequantized group-wise weight."""
    return F.linear(x, dequantize_weight_grouped(codes, scale, zero_point, group_size), bias)
