"""The quantization math: the single source of truth.

Passes, kernels, observers and the ONNX export all call these functions, so there is exactly one
definition of a scale, a zero-point, a rounding mode and a clamp in fxquant.

Conventions (the same as ONNX ``QuantizeLinear`` / ``DequantizeLinear``):
    q = clamp(round_half_to_even(x / scale) + zero_point, qmin, qmax)
    x' = (q - zero_point) * scale

Weights are signed (int8 containers); activations are unsigned (uint8), as ONNX Runtime's and
fbgemm's int8 kernels expect.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# fbgemm refuses activation scales below this (it would lose precision in its requantization);
# using the same floor keeps our reference kernel and the fast kernel bit-compatible.
MIN_ACTIVATION_SCALE = 6.1e-5
# Weight scales only need to be positive and normal so that x / scale never overflows.
MIN_WEIGHT_SCALE = torch.finfo(torch.float32).tiny


@dataclass(frozen=True)
class QRange:
    """The integer codes a quantized tensor may take."""

    qmin: int
    qmax: int

    @property
    def levels(self) -> int:
        return self.qmax - self.qmin


def weight_qrange(bits: int, symmetric: bool) -> QRange:
    """Signed weight codes. Symmetric ranges are restricted (-127..127 for 8 bits) so that zero
    sits in the middle and negation is exact."""
    half = 2 ** (bits - 1)
    return QRange(-(half - 1), half - 1) if symmetric else QRange(-half, half - 1)


def activation_qrange(reduce_range: bool) -> QRange:
    """Unsigned activation codes: 0..255, or 0..127 where the kernel needs 7-bit inputs."""
    return QRange(0, 127 if reduce_range else 255)


def _channel_view(t: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)


def reduce_min_max(
    x: torch.Tensor, axis: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``x`` over everything (axis None) or per slice along ``axis``."""
    if axis is None:
        return torch.aminmax(x.detach())
    if axis == 0 and x.dim() == 2:
        # Reduces a transposed view (GPT-2's Conv1D weight) in place, without a contiguous copy.
        return torch.amin(x.detach(), dim=1), torch.amax(x.detach(), dim=1)
    flat = x.detach().transpose(0, axis).reshape(x.shape[axis], -1)
    return torch.aminmax(flat, dim=1)


def weight_qparams(
    min_val: torch.Tensor, max_val: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero-point (int32) for weights with the given range(s).

    A zero-range (all-zero) channel gets scale 1 and zero-point 0: every value maps to code 0
    without dividing by zero.
    """
    qr = weight_qrange(bits, symmetric)
    min_val = torch.clamp(min_val.float(), max=0.0)
    max_val = torch.clamp(max_val.float(), min=0.0)
    if symmetric:
        scale = torch.maximum(-min_val, max_val) / qr.qmax
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = (max_val - min_val) / qr.levels
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zp = qr.qmin - torch.round(min_val / safe)
        zero_point = torch.clamp(zp, qr.qmin, qr.qmax).to(torch.int32)
    # A zero-range channel: zero-point 0 as documented (not qmin), so its codes are all 0.
    zero_point = torch.where(scale > 0, zero_point, torch.zeros_like(zero_point))
    scale = torch.where(scale > 0, scale.clamp(min=MIN_WEIGHT_SCALE), torch.ones_like(scale))
    return scale, zero_point


def activation_qparams(min_val: float, max_val: float, reduce_range: bool) -> tuple[float, int]:
    """Per-tensor unsigned activation scale and zero-point for the range [min_val, max_val].

    The range is widened to include 0 (so zero is exact: padding and ReLU outputs stay exact) and
    the zero-point is nudged to an integer, following the same rule as fbgemm's dynamic kernels
    (``ChooseQuantizationParams``), so the reference kernel and the fast kernel agree.
    """
    qr = activation_qrange(reduce_range)
    lo = min(float(min_val), 0.0)
    hi = max(float(max_val), 0.0)
    scale = (hi - lo) / qr.levels
    if scale == 0.0 or scale != scale or scale == float("inf"):
        scale = 0.1
    if scale < MIN_ACTIVATION_SCALE:
        scale = MIN_ACTIVATION_SCALE
        if lo == 0.0:
            hi = scale * qr.levels
        elif hi == 0.0:
            lo = -scale * qr.levels
        else:
            amplifier = MIN_ACTIVATION_SCALE / ((hi - lo) / qr.levels)
            lo, hi = lo * amplifier, hi * amplifier
    zp_from_min = qr.qmin - lo / scale
    zp_from_max = qr.qmax - hi / scale
    err_min = abs(qr.qmin) - abs(lo / scale)
    err_max = abs(qr.qmax) - abs(hi / scale)
    initial = zp_from_min if err_min < err_max else zp_from_max
    zero_point = int(min(max(round(initial), qr.qmin), qr.qmax))
    return float(scale), zero_point


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int,
    qrange: QRange,
    dtype: torch.dtype,
    axis: int | None = None,
) -> torch.Tensor:
    """Float to integer codes; ``axis`` selects per-channel parameters."""
    if axis is not None:
        scale = _channel_view(torch.as_tensor(scale), x.dim(), axis)
        zero_point = _channel_view(torch.as_tensor(zero_point), x.dim(), axis)
    q = torch.round(x / scale) + zero_point
    return torch.clamp(q, qrange.qmin, qrange.qmax).to(dtype)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int,
    axis: int | None = None,
) -> torch.Tensor:
    """Integer codes to float32; ``axis`` selects per-channel parameters."""
    if axis is not None:
        scale = _channel_view(torch.as_tensor(scale), q.dim(), axis)
        zero_point = _channel_view(torch.as_tensor(zero_point), q.dim(), axis)
    return (q.to(torch.float32) - zero_point) * scale


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int,
    qrange: QRange,
    axis: int | None = None,
) -> torch.Tensor:
    """Quantize then dequantize, in float: what the int8 model computes, without int storage."""
    if axis is not None:
        scale = _channel_view(torch.as_tensor(scale), x.dim(), axis)
        zero_point = _channel_view(torch.as_tensor(zero_point), x.dim(), axis)
    q = torch.clamp(torch.round(x / scale) + zero_point, qrange.qmin, qrange.qmax)
    return (q - zero_point) * scale


@dataclass(frozen=True)
class QuantizedWeight:
    """An int8 weight with its per-channel (or per-tensor) scale and zero-point."""

    codes: torch.Tensor  # torch.int8
    scale: torch.Tensor  # float32, shape [C] (per-channel) or [1]
    zero_point: torch.Tensor  # int32, same shape as scale
    axis: int  # channel axis of ``codes`` that ``scale`` runs along

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.codes, self.scale, self.zero_point, axis=self.axis)


# vpmaddubsw (AVX2 int8 GEMMs without VNNI) adds u8*s8 products of adjacent K pairs in int16:
# with activation codes up to 255, same-sign weight pairs must satisfy |c0 + c1| <= 128
# (255 * 128 = 32,640 <= 32,767).
PAIR_SUM_LIMIT = 128


def pair_sums(codes_or_weight: torch.Tensor) -> torch.Tensor:
    """|w[..., 2k] + w[..., 2k+1]| for every adjacent pair along the last axis (K)."""
    w = codes_or_weight.float()
    if w.shape[-1] % 2:
        w = torch.nn.functional.pad(w, (0, 1))
    return (w[..., 0::2] + w[..., 1::2]).abs()


def kernel_pair_sums(codes_or_weight: torch.Tensor) -> torch.Tensor:
    """The pair sums an AVX2 int8 kernel forms from a weight, one row per output channel.

    A matmul weight ``[N, K]`` pairs adjacent K. A conv weight ``[O, C/groups, *kernel]`` pairs
    adjacent input channels at each kernel tap, each group's channels padded to even: oneDNN's
    channels-last int8 convolution (``fxquant.kernels.conv``), as measured with its AVX2 kernels.
    """
    w = codes_or_weight
    if w.dim() > 2:
        return pair_sums(w.movedim(1, -1)).reshape(w.shape[0], -1)
    return pair_sums(w.reshape(w.shape[0], -1))


def pair_safe_scale(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-row scales raised just enough that no pair of codes the kernel adds in 16 bits
    (:func:`kernel_pair_sums`) sums past ``PAIR_SUM_LIMIT`` in magnitude.

    Rounding moves each code by at most 1/2, so requiring ``|w0 + w1| / scale <= LIMIT - 1``
    guarantees ``|c0 + c1| <= LIMIT`` for the rounded codes. Most rows keep their min-max scale;
    rows with a large same-sign pair lose a fraction of a bit, instead of every row losing a whole
    bit (7-bit weights) or the activations losing one (reduce_range).
    """
    peak = kernel_pair_sums(weight).amax(dim=1)
    return torch.maximum(scale, peak / (PAIR_SUM_LIMIT - 1))


def quantize_weight(
    weight: torch.Tensor,
    bits: int,
    symmetric: bool,
    per_channel: bool,
    axis: int = 0,
    pair_safe: bool = False,
) -> QuantizedWeight:
    """Quantize a weight tensor: one scale per slice along ``axis``, or one for the whole tensor.

    Per-tensor parameters are still stored with one entry per channel (all equal), so every
    kernel and the ONNX export handle a single layout. ``pair_safe`` (symmetric, per-channel,
    axis 0) raises row scales where needed so that AVX2 int8 kernels cannot saturate with 8-bit
    activations (see :func:`pair_safe_scale`).
    """
    w = weight.detach().float()
    lo, hi = reduce_min_max(w, axis if per_channel else None)
    channels = w.shape[axis]
    lo, hi = lo.reshape(-1).expand(channels), hi.reshape(-1).expand(channels)
    scale, zero_point = weight_qparams(lo, hi, bits, symmetric)
    if pair_safe:
        if not (symmetric and per_channel and axis == 0):
            raise ValueError("pair_safe needs symmetric per-channel weights along axis 0")
        scale = pair_safe_scale(w, scale)
    qr = weight_qrange(bits, symmetric)
    if axis != 0:
        codes = quantize(w, scale, zero_point, qr, torch.int8, axis=axis)
        return QuantizedWeight(codes.contiguous(), scale.contiguous(), zero_point.contiguous(),
                               axis)
    # Row blocks of ~4M weights: the float temporaries of rounding stay a few MB, not several
    # times an LLM's embedding table.
    codes = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    rows = max(1, _BLOCK_ELEMENTS // max(1, w[0].numel()))
    scale_rows = _channel_view(scale, w.dim(), 0)
    zp_rows = _channel_view(zero_point, w.dim(), 0)
    for start in range(0, w.shape[0], rows):
        block = slice(start, start + rows)
        # quantize(), computed in place on one temporary: round(w / scale) + zp, clamped.
        t = torch.div(w[block], scale_rows[block]).round_()
        if not symmetric:
            t.add_(zp_rows[block])
        codes[block] = t.clamp_(qr.qmin, qr.qmax)
    return QuantizedWeight(codes, scale.contiguous(), zero_point.contiguous(), axis)


_BLOCK_ELEMENTS = 1 << 22
