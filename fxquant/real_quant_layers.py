"""The seed toolkit's int8 layers beyond the document's linear: embeddings and convolutions.

``convert_to_real_quant`` (:mod:`fxquant.real_quant`) builds them from ``nn.Embedding`` and
``nn.Conv1d`` / ``nn.Conv2d`` (and their fake-quant twins). Like ``RealQuantizeLinear`` they hold
``w_int8`` (torch.int8, one row / output channel per scale), ``w_scale`` (float32), ``w_zp``
(int32) and a float ``bias`` buffer, and run fxquant's ops: ``fxquant::embedding`` (gathers int8
rows, dequantizes only those) and ``fxquant::conv_dynamic`` (oneDNN int8 convolution). A
weight-only convolution dequantizes its weight and runs the float convolution (no int8 kernel
takes float activations).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import numerics, ops
from .errors import ConfigError
from .reduce_range import kernel_safe_reduce_range

ConvMode = Literal["dynamic", "weight_only"]


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
