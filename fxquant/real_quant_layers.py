"""The seed toolkit's int8 modules: the document's ``RealQuantize`` (a tensor quantizer) and
``RealQuantizeLinear``, and the layers beyond it, embeddings and convolutions.

``convert_to_real_quant`` (:mod:`fxquant.real_quant`, which re-exports these classes) builds them
from ``nn.Linear`` / GPT-2 ``Conv1D``, ``nn.Embedding`` and ``nn.Conv1d`` / ``nn.Conv2d`` (and
their fake-quant twins). Like ``RealQuantizeLinear`` the embeddings and convolutions hold
``w_int8`` (torch.int8, one row / output channel per scale), ``w_scale`` (float32), ``w_zp``
(int32) and a float ``bias`` buffer, and run fxquant's ops: ``fxquant::embedding`` (gathers int8
rows, dequantizes only those) and ``fxquant::conv_dynamic`` (oneDNN int8 convolution). A
weight-only convolution dequantizes its weight and runs the float convolution (no int8 kernel
takes float activations).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import numerics, ops
from .errors import CalibrationError, ConfigError
from .reduce_range import kernel_safe_reduce_range

LinearMode = Literal["dynamic", "weight_only"]
ConvMode = LinearMode
_LINEAR_MODES = ("dynamic", "weight_only")


class RealQuantize(nn.Module):
    """Quantize a tensor to real integer codes with a scale and zero-point taken from data.

    Args:
        bits: 2 to 16. Codes are stored in ``torch.int8`` up to 8 bits, ``torch.int16`` above.
        symmetric: zero-point 0 and codes in ``[-(2^(b-1)-1), 2^(b-1)-1]``; otherwise the full
            signed range ``[-2^(b-1), 2^(b-1)-1]`` with a zero-point (asymmetric).
        axis: one scale per slice along this axis (per-channel), or one for the tensor (None).

    ``calibrate(x)`` widens the running min/max with ``x`` and recomputes the scale and
    zero-point; it may be called on several batches. ``quantize`` on an uncalibrated module
    calibrates on its own input first. ``forward`` is quantize-then-dequantize (float out).
    """

    min_val: torch.Tensor
    max_val: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self, bits: int = 8, symmetric: bool = True, axis: int | None = None) -> None:
        super().__init__()
        if not isinstance(bits, int) or not 2 <= bits <= 16:
            raise ConfigError(f"bits={bits!r}: RealQuantize supports integer widths 2 to 16.")
        self.bits = bits
        self.symmetric = symmetric
        self.axis = axis
        self.qrange = numerics.weight_qrange(bits, symmetric)
        self.dtype = torch.int8 if bits <= 8 else torch.int16
        self.register_buffer("min_val", torch.tensor([]))
        self.register_buffer("max_val", torch.tensor([]))
        self.register_buffer("scale", torch.tensor([]))
        self.register_buffer("zero_point", torch.tensor([], dtype=torch.int32))

    @property
    def calibrated(self) -> bool:
        return self.scale.numel() > 0

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> RealQuantize:
        """Widen the observed range with ``x`` and recompute scale and zero-point."""
        if not torch.isfinite(x).all():
            raise CalibrationError("RealQuantize.calibrate got NaN or Inf; clean the data first.")
        lo, hi = numerics.reduce_min_max(x.float(), self.axis)
        lo, hi = lo.reshape(-1), hi.reshape(-1)
        if self.calibrated:
            lo, hi = torch.minimum(lo, self.min_val), torch.maximum(hi, self.max_val)
        self.min_val, self.max_val = lo, hi
        self.scale, self.zero_point = numerics.weight_qparams(lo, hi, self.bits, self.symmetric)
        return self

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Float to integer codes (``int8``, or ``int16`` above 8 bits)."""
        if not self.calibrated:
            self.calibrate(x)
        scale, zp = self._params()
        return numerics.quantize(x.float(), scale, zp, self.qrange, self.dtype, axis=self.axis)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        """Integer codes back to float32."""
        if not self.calibrated:
            raise CalibrationError("RealQuantize.dequantize before calibrate/quantize: no scale.")
        scale, zp = self._params()
        return numerics.dequantize(q, scale, zp, axis=self.axis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequantize(self.quantize(x))

    def _params(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.axis is None:
            return self.scale.reshape(()), self.zero_point.reshape(())
        return self.scale, self.zero_point

    def extra_repr(self) -> str:
        kind = "symmetric" if self.symmetric else "asymmetric"
        return f"bits={self.bits}, {kind}, axis={self.axis}, calibrated={self.calibrated}"


class RealQuantizeLinear(nn.Module):
    """A linear layer that stores int8 weights and runs fxquant's fused int8 kernel.

    Built float (like ``nn.Linear``: a trainable ``weight`` and ``bias``) or from an existing
    layer with :meth:`from_float`. :meth:`quantize_weights` replaces the float weight by the
    buffers ``w_int8`` (torch.int8), ``w_scale`` (float32, one per output channel) and ``w_zp``
    (int32) -- the role names fxquant's passes use -- and turns ``bias`` into a buffer. From then
    on the layer is for inference (the int8 kernel has no gradient).

    Args:
        bits: weight bits, 2 to 8 (codes always live in int8 containers for the kernel).
        symmetric, per_channel: the weight scheme (fxquant's default: symmetric per channel).
        mode: ``"dynamic"`` quantizes each batch's activations to int8 on the fly from its own
            range (fbgemm int8 x int8 GEMM: fastest); ``"weight_only"`` keeps float activations.
        reduce_range: 7-bit activations. ``None`` (default): exactly when the weights have 8 bits
            and activations are quantized -- the pairing fxquant's int8 kernel needs to stay
            exact on AVX2 CPUs without VNNI (``QuantConfig.may_saturate``); narrower weights
            keep 8-bit activations.
    """

    w_int8: torch.Tensor
    w_scale: torch.Tensor
    w_zp: torch.Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 8, *,
                 symmetric: bool = True, per_channel: bool = True, mode: LinearMode = "dynamic",
                 reduce_range: bool | None = None) -> None:
        super().__init__()
        if not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ConfigError(
                f"bits={bits!r}: RealQuantizeLinear runs int8 kernels, so weights take 2 to 8 "
                "bits. Use RealQuantize for 16-bit tensors."
            )
        if mode not in _LINEAR_MODES:
            raise ConfigError(f"mode={mode!r}: choose one of {', '.join(_LINEAR_MODES)}.")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.symmetric, self.per_channel = bits, symmetric, per_channel
        self.mode: LinearMode = mode
        if reduce_range is None:
            reduce_range = kernel_safe_reduce_range(bits, mode)
        self.reduce_range = reduce_range
        self.weight: nn.Parameter | None = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self._reset_parameters()

    def _float_weight(self) -> nn.Parameter:
        if self.weight is None:
            raise RuntimeError("this RealQuantizeLinear holds int8 weights; it has no float one.")
        return self.weight

    def _reset_parameters(self) -> None:
        # nn.Linear's initialisation, so a fresh layer trains like one.
        nn.init.kaiming_uniform_(self._float_weight(), a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_float(
        cls, linear: nn.Linear, bits: int = 8, *, quantize: bool = True, **options: Any
    ) -> RealQuantizeLinear:
        """A RealQuantizeLinear with ``linear``'s weights (copied), quantized unless told not."""
        layer = cls(
            linear.in_features, linear.out_features, linear.bias is not None, bits, **options
        )
        with torch.no_grad():
            layer._float_weight().copy_(linear.weight)
            if layer.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.train(linear.training)
        return layer.quantize_weights() if quantize else layer

    @property
    def is_quantized(self) -> bool:
        return self.weight is None

    @property
    def _fxquant_quantized(self) -> bool:
        # fxquant.capture.is_quantized reads this: a quantized layer must not be quantized again.
        return self.is_quantized

    @torch.no_grad()
    def quantize_weights(self) -> RealQuantizeLinear:
        """Replace the float weight by int8 codes, a scale and a zero-point (in place; returns
        the layer). Does nothing when the weights are already int8."""
        if self.is_quantized:
            return self
        qw = numerics.quantize_weight(
            self._float_weight(), self.bits, self.symmetric, self.per_channel
        )
        bias = None if self.bias is None else self.bias.detach().float().clone()
        del self.weight, self.bias
        self.weight = None
        self.register_buffer("w_int8", qw.codes)
        self.register_buffer("w_scale", qw.scale)
        self.register_buffer("w_zp", qw.zero_point)
        self.register_buffer("bias", bias)
        return self

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the int8 codes stand for (the float weight itself before
        quantization)."""
        if not self.is_quantized:
            return self._float_weight().detach()
        return numerics.dequantize(self.w_int8, self.w_scale, self.w_zp, axis=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_quantized:
            return F.linear(x, self._float_weight(), self.bias)
        if self.mode == "dynamic":
            return ops.linear_dynamic(
                x, self.w_int8, self.w_scale, self.w_zp, self.bias, self.reduce_range
            )
        return ops.linear_weight_only(x, self.w_int8, self.w_scale, self.w_zp, self.bias)

    def to_float(self) -> nn.Linear:
        """An ``nn.Linear`` whose weight is :meth:`dequantized_weight`."""
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.dequantized_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear.train(self.training)

    def extra_repr(self) -> str:
        state = "int8" if self.is_quantized else "float (call quantize_weights)"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, bits={self.bits}, mode={self.mode}, "
            f"weights={state}"
        )


class _Int8Weight(nn.Module):
    """Holds one int8 weight (per-channel along axis 0) and answers for it."""

    w_int8: torch.Tensor
    w_scale: torch.Tensor
    w_zp: torch.Tensor

    def _store(self, weight: torch.Tensor, bits: int, symmetric: bool, per_channel: bool) -> None:
        if not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ConfigError(f"bits={bits!r}: int8 layers take weights of 2 to 8 bits.")
        self.bits, self.symmetric, self.per_channel = bits, symmetric, per_channel
        qw = numerics.quantize_weight(weight.detach().float(), bits, symmetric, per_channel)
        self.register_buffer("w_int8", qw.codes)
        self.register_buffer("w_scale", qw.scale)
        self.register_buffer("w_zp", qw.zero_point)

    @property
    def is_quantized(self) -> bool:
        return True

    @property
    def _fxquant_quantized(self) -> bool:
        return True  # fxquant.quantize refuses to quantize it again

    def dequantized_weight(self) -> torch.Tensor:
        return numerics.dequantize(self.w_int8, self.w_scale, self.w_zp, axis=0)


class RealQuantizeEmbedding(_Int8Weight):
    """An embedding table stored int8, one scale per row; ``forward`` gathers int8 rows."""

    def __init__(self, embedding: nn.Embedding, bits: int = 8, *, symmetric: bool = True) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx = embedding.padding_idx
        self._store(embedding.weight, bits, symmetric, True)
        self.train(embedding.training)

    @property
    def weight(self) -> torch.Tensor:
        """The float table the codes stand for (model code reads ``.weight.dtype`` / shape)."""
        return self.dequantized_weight()

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return ops.embedding(indices, self.w_int8, self.w_scale, self.w_zp)

    def to_float(self) -> nn.Embedding:
        table = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx)
        with torch.no_grad():
            table.weight.copy_(self.dequantized_weight())
        return table.train(self.training)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, weights=int8"


class RealQuantizeConv(_Int8Weight):
    """``nn.Conv1d`` / ``nn.Conv2d`` (zero padding) with an int8 weight (one scale per output
    channel). ``mode="dynamic"``: int8 activations from each batch's range, oneDNN's int8
    convolution; ``"weight_only"``: float activations, the weight dequantized per call."""

    bias: torch.Tensor | None

    def __init__(self, conv: nn.Conv1d | nn.Conv2d, bits: int = 8, *, symmetric: bool = True,
                 per_channel: bool = True, mode: ConvMode = "dynamic",
                 reduce_range: bool | None = None) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ConfigError(f"{type(conv).__name__} with padding {conv.padding!r} / "
                              f"{conv.padding_mode!r}: int8 convs take zero padding given in "
                              "numbers; leave this layer float.")
        # Called with sizes of its own length, which the stubs (tuple[int] / tuple[int, int])
        # cannot relate to the class: typed as a plain factory.
        self.float_type: Callable[..., nn.Conv1d | nn.Conv2d] = type(conv)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = conv.kernel_size
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.mode: ConvMode = mode
        self.reduce_range = (kernel_safe_reduce_range(bits, mode) if reduce_range is None
                             else reduce_range)
        self._store(conv.weight, bits, symmetric, per_channel)
        bias = None if conv.bias is None else conv.bias.detach().float().clone()
        self.register_buffer("bias", bias)
        self.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "dynamic":
            return ops.conv_dynamic(x, self.w_int8, self.w_scale, self.w_zp, self.bias,
                                    self.reduce_range, self.stride, self.padding, self.dilation,
                                    self.groups, False)
        conv = F.conv1d if self.w_int8.dim() == 3 else F.conv2d
        return conv(x, self.dequantized_weight(), self.bias, self.stride, self.padding,
                    self.dilation, self.groups)

    def to_float(self) -> nn.Module:
        conv = self.float_type(self.in_channels, self.out_channels, self.kernel_size,
                               self.stride, self.padding, self.dilation, self.groups,
                               self.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(self.dequantized_weight())
            if self.bias is not None and conv.bias is not None:
                conv.bias.copy_(self.bias)
        return conv.train(self.training)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.kernel_size)}, "
                f"stride={tuple(self.stride)}, bits={self.bits}, mode={self.mode}, weights=int8")
