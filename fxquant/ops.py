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
from collections.abc import Iterator

import torch

from . import numerics
from .kernels import fbgemm, reference

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


def _define(schema: str, impl, fake) -> None:
    name = schema.split("(", 1)[0]
    _lib.define(schema)
    # A CPU kernel is dispatched with less overhead than a composite one (~10 us against ~25 us
    # per call, which matters at one token); the composite registration serves other devices.
    _lib.impl(name, impl, "CPU")
    _lib.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"fxquant::{name}", fake, lib=_lib)


# --- weights ---------------------------------------------------------------------------------


def _dequantize_weight(codes, scale, zero_point, axis: int):
    return numerics.dequantize(codes, scale, zero_point, axis=axis)


def _dequantize_weight_fake(codes, scale, zero_point, axis: int):
    return torch.empty(codes.shape, dtype=torch.float32, device=codes.device)


_define(
    "dequantize_weight(Tensor codes, Tensor scale, Tensor zero_point, int axis) -> Tensor",
    _dequantize_weight,
    _dequantize_weight_fake,
)


# --- activations -----------------------------------------------------------------------------


def _fake_quantize_dynamic(x, reduce_range: bool):
    return reference.fake_quantize_dynamic(x, reduce_range)


_define(
    "fake_quantize_dynamic(Tensor x, bool reduce_range) -> Tensor",
    _fake_quantize_dynamic,
    lambda x, reduce_range: torch.empty_like(x),
)


def _quantize_activation(x, scale: float, zero_point: int, reduce_range: bool):
    qr = numerics.activation_qrange(reduce_range)
    return numerics.quantize(x, scale, zero_point, qr, torch.uint8)


_define(
    "quantize_activation(Tensor x, float scale, int zero_point, bool reduce_range) -> Tensor",
    _quantize_activation,
    lambda x, scale, zero_point, reduce_range: torch.empty_like(x, dtype=torch.uint8),
)


def _dequantize_activation(q, scale: float, zero_point: int):
    return numerics.dequantize(q, scale, zero_point)


_define(
    "dequantize_activation(Tensor q, float scale, int zero_point) -> Tensor",
    _dequantize_activation,
    lambda q, scale, zero_point: torch.empty_like(q, dtype=torch.float32),
)


# --- fused matmuls ---------------------------------------------------------------------------


def _linear_fake(x, codes, *args):
    return x.new_empty((*x.shape[:-1], codes.shape[0]))


def _linear_dynamic(x, codes, scale, zero_point, bias, reduce_range: bool):
    if _fast(x, codes):
        return fbgemm.linear_dynamic(x, codes, scale, zero_point, bias, reduce_range)
    return reference.linear_dynamic(x, codes, scale, zero_point, bias, reduce_range)


_define(
    "linear_dynamic(Tensor x, Tensor codes, Tensor scale, Tensor zero_point, Tensor? bias, "
    "bool reduce_range) -> Tensor",
    _linear_dynamic,
    _linear_fake,
)


def _linear_static(x, x_scale: float, x_zero_point: int, reduce_range: bool, codes, scale,
                   zero_point, bias):
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


def _linear_weight_only(x, codes, scale, zero_point, bias):
    if _fast(x, codes):
        return fbgemm.linear_weight_only(x, codes, scale, zero_point, bias)
    return reference.linear_int8_weight(x, codes, scale, zero_point, bias)


_define(
    "linear_weight_only(Tensor x, Tensor codes, Tensor scale, Tensor zero_point, Tensor? bias) "
    "-> Tensor",
    _linear_weight_only,
    _linear_fake,
)


def _embedding(indices, codes, scale, zero_point):
    return reference.embedding(indices, codes, scale, zero_point)


def _embedding_fake(indices, codes, scale, zero_point):
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

FUSED_LINEAR_OPS = (linear_dynamic, linear_static, linear_weight_only)
ALL_OPS = (
    dequantize_weight,
    fake_quantize_dynamic,
    quantize_activation,
    dequantize_activation,
    *FUSED_LINEAR_OPS,
    embedding,
)
