"""fxquant's operators, registered with ``torch.library`` under the ``fxquant`` namespace.

A converted graph calls only these ops (plus ordinary torch ops), so ``torch.export`` and
``torch.compile`` see one op per quantized matmul, and the ONNX export has one symbol to map per op.

Each op has one implementation that picks the fast kernel where it applies (float32 on CPU with
fbgemm) and the reference kernel otherwise, and a fake (meta) implementation for tracing.
``reference_kernels()`` forces the reference path, for parity tests and debugging.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from . import numerics
from .kernels import conv, fbgemm, reference, weight_only

if TYPE_CHECKING:
    from torch._ops import OpOverload

_lib = torch.library.Library("fxquant", "DEF")
_state = threading.local()


@contextlib.contextmanager
def reference_kernels() -> Iterator[None]:
    """Within this block, every fxquant op runs its reference kernel."""
    previous = getattr(_state, "reference", False)
    _state.reference = True
    try:
        yield
    finally:
        _state.reference = previous


def _fast(x: torch.Tensor, codes: torch.Tensor) -> bool:
    return not getattr(_state, "reference", False) and fbgemm.can_run(x, codes)


def _define(schema: str, impl: Callable[..., Any], fake: Callable[..., Any]) -> None:
    name = schema.split("(", 1)[0]
    _lib.define(schema)
    # A CPU kernel is dispatched with less overhead than a composite one (~10 us against ~25 us
    # per call, which matters at one token); the composite registration serves other devices.
    _lib.impl(name, impl, "CPU")
    _lib.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"fxquant::{name}", fake, lib=_lib)


# --- weights ---------------------------------------------------------------------------------


def _dequantize_weight(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                       axis: int) -> torch.Tensor:
    return numerics.dequantize(codes, scale, zero_point, axis=axis)


def _dequantize_weight_fake(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                            axis: int) -> torch.Tensor:
    return torch.empty(codes.shape, dtype=torch.float32, device=codes.device)


_define(
    "dequantize_weight(Tensor codes, Tensor scale, Tensor zero_point, int axis) -> Tensor",
    _dequantize_weight,
    _dequantize_weight_fake,
)


# --- activations -----------------------------------------------------------------------------


def _define_fake_quantize(name: str) -> None:
    """The op ``name(Tensor x, bool reduce_range) -> Tensor``: ``reference.<name>``, which
    quantizes and dequantizes ``x`` (shape and dtype kept); it has no fast kernel."""
    _define(f"{name}(Tensor x, bool reduce_range) -> Tensor", getattr(reference, name),
            lambda x, reduce_range: torch.empty_like(x))


_define_fake_quantize("fake_quantize_dynamic")


def _quantize_activation(x: torch.Tensor, scale: float, zero_point: int,
                         reduce_range: bool) -> torch.Tensor:
    qr = numerics.activation_qrange(reduce_range)
    return numerics.quantize(x, scale, zero_point, qr, torch.uint8)


_define(
    "quantize_activation(Tensor x, float scale, int zero_point, bool reduce_range) -> Tensor",
    _quantize_activation,
    lambda x, scale, zero_point, reduce_range: torch.empty_like(x, dtype=torch.uint8),
)


def _dequantize_activation(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    return numerics.dequantize(q, scale, zero_point)


_define(
    "dequantize_activation(Tensor q, float scale, int zero_point) -> Tensor",
    _dequantize_activation,
    lambda q, scale, zero_point: torch.empty_like(q, dtype=torch.float32),
)


# --- fused matmuls ---------------------------------------------------------------------------


def _linear_fake(x: torch.Tensor, codes: torch.Tensor, *args: object) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], codes.shape[0]))


def _linear_dynamic(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                    zero_point: torch.Tensor, bias: torch.Tensor | None,
                    reduce_range: bool) -> torch.Tensor:
    if _fast(x, codes):
        return fbgemm.linear_dynamic(x, codes, scale, zero_point, bias, reduce_range)
    return reference.linear_dynamic(x, codes, scale, zero_point, bias, reduce_range)


# linear_dynamic and linear_dynamic_per_token take the same arguments.
_LINEAR_DYNAMIC_SCHEMA = ("(Tensor x, Tensor codes, Tensor scale, Tensor zero_point, Tensor? bias, "
                          "bool reduce_range) -> Tensor")
_define(f"linear_dynamic{_LINEAR_DYNAMIC_SCHEMA}", _linear_dynamic, _linear_fake)


def _linear_static(x: torch.Tensor, x_scale: float, x_zero_point: int, reduce_range: bool,
                   codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    args = (x_scale, x_zero_point, reduce_range, codes, scale, zero_point, bias)
    if _fast(x, codes):
        return fbgemm.linear_static(x, *args)
    return reference.linear_static(x, *args)


_define(
    "linear_static(Tensor x, float x_scale, int x_zero_point, bool reduce_range, Tensor codes, "
    "Tensor scale, Tensor zero_point, Tensor? bias) -> Tensor",
    _linear_static,
    lambda x, xs, xz, rr, codes, *rest: _linear_fake(x, codes),
)


def _linear_weight_only(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                        zero_point: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    reference_only = getattr(_state, "reference", False)
    if not reference_only and weight_only.available() and not zero_point.any():
        # The AVX2 weight-only kernel: float activations, exact (docs/weight_only_kernel.md).
        return weight_only.linear_int8(x, codes, scale, bias)
    if _fast(x, codes):
        return fbgemm.linear_weight_only(x, codes, scale, zero_point, bias)
    return reference.linear_weight_only(x, codes, scale, zero_point, bias)


_define(
    "linear_weight_only(Tensor x, Tensor codes, Tensor scale, Tensor zero_point, Tensor? bias) "
    "-> Tensor",
    _linear_weight_only,
    _linear_fake,
)


def _embedding(indices: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
               zero_point: torch.Tensor) -> torch.Tensor:
    return reference.embedding(indices, codes, scale, zero_point)


def _embedding_fake(indices: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                    zero_point: torch.Tensor) -> torch.Tensor:
    return torch.empty((*indices.shape, codes.shape[1]), dtype=torch.float32, device=codes.device)


_define(
    "embedding(Tensor indices, Tensor codes, Tensor scale, Tensor zero_point) -> Tensor",
    _embedding,
    _embedding_fake,
)

dequantize_weight = torch.ops.fxquant.dequantize_weight.default
fake_quantize_dynamic = torch.ops.fxquant.fake_quantize_dynamic.default
quantize_activation = torch.ops.fxquant.quantize_activation.default
dequantize_activation = torch.ops.fxquant.dequantize_activation.default
linear_dynamic = torch.ops.fxquant.linear_dynamic.default
linear_static = torch.ops.fxquant.linear_static.default
linear_weight_only = torch.ops.fxquant.linear_weight_only.default
embedding = torch.ops.fxquant.embedding.default

FUSED_LINEAR_OPS: tuple[OpOverload, ...] = (linear_dynamic, linear_static, linear_weight_only)
ALL_OPS: tuple[OpOverload, ...] = (
    dequantize_weight,
    fake_quantize_dynamic,
    quantize_activation,
    dequantize_activation,
    *FUSED_LINEAR_OPS,
    embedding,
)


# --- convolutions ----------------------------------------------------------------------------
# conv_dynamic / conv_static take linear_dynamic's / linear_static's arguments in the same places,
# then the conv geometry and a fused ReLU; the weight's rank says Conv1d or Conv2d. Batched
# outputs are channels-last (channel innermost), as oneDNN writes them; the reference path matches.


def _fast_conv(x: torch.Tensor, codes: torch.Tensor) -> bool:
    return not getattr(_state, "reference", False) and conv.can_run(x, codes)


def _channels_last(y: torch.Tensor) -> torch.Tensor:
    return y.movedim(1, -1).contiguous().movedim(-1, 1)


def _conv_fake(x: torch.Tensor, codes: torch.Tensor, stride: list[int], padding: list[int],
               dilation: list[int]) -> torch.Tensor:
    batched = x.dim() == codes.dim()
    spatial = x.shape[2:] if batched else x.shape[1:]
    out = [
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, k, s, p, d in zip(spatial, codes.shape[2:], stride, padding, dilation, strict=True)
    ]
    if not batched:
        return x.new_empty((codes.shape[0], *out))
    return x.new_empty((x.shape[0], *out, codes.shape[0])).movedim(-1, 1)


def _conv_dynamic(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                  zero_point: torch.Tensor, bias: torch.Tensor | None, reduce_range: bool,
                  stride: list[int], padding: list[int], dilation: list[int], groups: int,
                  relu: bool) -> torch.Tensor:
    if _fast_conv(x, codes):
        geometry = (tuple(stride), tuple(padding), tuple(dilation), groups)
        y = conv.conv_dynamic(x, codes, scale, zero_point, bias, reduce_range, geometry, relu)
        if y is not None:
            return y
    y = reference.conv_dynamic(x, codes, scale, zero_point, bias, reduce_range, stride, padding,
                               dilation, groups, relu)
    return _channels_last(y) if x.dim() == codes.dim() else y


_define(
    "conv_dynamic(Tensor x, Tensor codes, Tensor scale, Tensor zero_point, Tensor? bias, "
    "bool reduce_range, int[] stride, int[] padding, int[] dilation, int groups, bool relu) "
    "-> Tensor",
    _conv_dynamic,
    lambda x, codes, s, z, b, rr, stride, padding, dilation, g, relu: _conv_fake(
        x, codes, stride, padding, dilation),
)


def _conv_static(x: torch.Tensor, x_scale: float, x_zero_point: int, reduce_range: bool,
                 codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                 bias: torch.Tensor | None, stride: list[int], padding: list[int],
                 dilation: list[int], groups: int, relu: bool) -> torch.Tensor:
    if _fast_conv(x, codes):
        geometry = (tuple(stride), tuple(padding), tuple(dilation), groups)
        y = conv.conv_static(x, x_scale, x_zero_point, reduce_range, codes, scale, zero_point,
                             bias, geometry, relu)
        if y is not None:
            return y
    y = reference.conv_static(x, x_scale, x_zero_point, reduce_range, codes, scale, zero_point,
                              bias, stride, padding, dilation, groups, relu)
    return _channels_last(y) if x.dim() == codes.dim() else y


_define(
    "conv_static(Tensor x, float x_scale, int x_zero_point, bool reduce_range, Tensor codes, "
    "Tensor scale, Tensor zero_point, Tensor? bias, int[] stride, int[] padding, int[] dilation, "
    "int groups, bool relu) -> Tensor",
    _conv_static,
    lambda x, xs, xz, rr, codes, s, z, b, stride, padding, dilation, g, relu: _conv_fake(
        x, codes, stride, padding, dilation),
)

conv_dynamic = torch.ops.fxquant.conv_dynamic.default
conv_static = torch.ops.fxquant.conv_static.default
FUSED_CONV_OPS = (conv_dynamic, conv_static)
ALL_OPS = (*ALL_OPS, *FUSED_CONV_OPS)


# --- per-token activations, group-wise weights -----------------------------------------------
# fake_quantize_dynamic_per_token / linear_dynamic_per_token: dynamic mode with every token (row)
# scaled by its own abs-max before the per-tensor quantization (QuantConfig.activation_granularity
# 'per_token'); the int8 GEMM is fbgemm's, the scaling two elementwise ops around it.
# dequantize_weight_grouped / linear_weight_only_grouped: weight-only layers with one scale (and
# zero-point) per group of input channels; ``codes`` is uint8, two codes per byte for 4 bits or
# fewer (fxquant/kernels/packing.py); packed codes in groups of a multiple of 32 run fxquant's int4
# kernel (fxquant/kernels/weight_only.py), the rest the reference (dequantize + F.linear).


_define_fake_quantize("fake_quantize_dynamic_per_token")


def _linear_dynamic_per_token(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                              zero_point: torch.Tensor, bias: torch.Tensor | None,
                              reduce_range: bool) -> torch.Tensor:
    if _fast(x, codes):
        r = reference.token_scales(x)
        y = fbgemm.linear_dynamic(x / r, codes, scale, zero_point, None, reduce_range).mul_(r)
        return y if bias is None else y.add_(bias)
    return reference.linear_dynamic_per_token(x, codes, scale, zero_point, bias, reduce_range)


_define(f"linear_dynamic_per_token{_LINEAR_DYNAMIC_SCHEMA}", _linear_dynamic_per_token,
        _linear_fake)


def _dequantize_weight_grouped(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                               group_size: int) -> torch.Tensor:
    return reference.dequantize_weight_grouped(codes, scale, zero_point, group_size)


_define(
    "dequantize_weight_grouped(Tensor codes, Tensor scale, Tensor zero_point, int group_size) "
    "-> Tensor",
    _dequantize_weight_grouped,
    lambda codes, scale, zero_point, group_size: torch.empty(
        (scale.shape[0], scale.shape[1] * group_size), dtype=torch.float32, device=codes.device),
)


def _linear_weight_only_grouped(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                                zero_point: torch.Tensor, bias: torch.Tensor | None,
                                group_size: int) -> torch.Tensor:
    packed = codes.shape[1] * 2 == scale.shape[1] * group_size
    if packed and group_size % 32 == 0 and not getattr(_state, "reference", False):
        # fxquant's int4 kernel (C++; its own PyTorch fallback where it cannot be built).
        return weight_only.linear_int4(x, codes, scale, zero_point, group_size, bias)
    return reference.linear_weight_only_grouped(x, codes, scale, zero_point, bias, group_size)


_define(
    "linear_weight_only_grouped(Tensor x, Tensor codes, Tensor scale, Tensor zero_point, "
    "Tensor? bias, int group_size) -> Tensor",
    _linear_weight_only_grouped,
    lambda x, codes, scale, *rest: x.new_empty((*x.shape[:-1], scale.shape[0])),
)

fake_quantize_dynamic_per_token = torch.ops.fxquant.fake_quantize_dynamic_per_token.default
linear_dynamic_per_token = torch.ops.fxquant.linear_dynamic_per_token.default
dequantize_weight_grouped = torch.ops.fxquant.dequantize_weight_grouped.default
linear_weight_only_grouped = torch.ops.fxquant.linear_weight_only_grouped.default
FUSED_LINEAR_OPS = (*FUSED_LINEAR_OPS, linear_dynamic_per_token, linear_weight_only_grouped)
ALL_OPS = (*ALL_OPS, fake_quantize_dynamic_per_token, linear_dynamic_per_token,
           dequantize_weight_grouped, linear_weight_only_grouped)
