"""Fast int8 CPU kernels, from fbgemm through ``torch.ops.quantized``.

Why fbgemm: measured on this project's 2-core AVX2 (no VNNI) machine, a 768x3072 linear at one
token runs in ~120 us with fbgemm's dynamic int8 GEMM against ~350 us in fp32, while
dequantize-then-matmul (~1,600 us), ``torch._weight_int8pack_mm`` (~2,000 us), ``torch._int_mm``
(~2,300 us) and oneDNN's ``qlinear_pointwise`` (~490 us) are slower (docs/kernel_choice.md).

This is the only module that touches ``torch.ops.quantized``; every call goes through fxquant's own
ops (:mod:`fxquant.ops`), so the backend can be swapped without touching a graph.

The int8 buffers on the GraphModule stay the source of truth. fbgemm needs its weights packed into
its own layout; the packed copy is a cache keyed on the identity and version of those buffers and
rebuilt whenever they change or are replaced.
"""

from __future__ import annotations

import functools
import threading
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .. import numerics
from . import inference_input

_LINEAR_DYNAMIC = torch.ops.quantized.linear_dynamic.default
_LINEAR_STATIC = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32.default
@functools.cache
def available() -> bool:
    """True where fbgemm's kernels are compiled in (x86 builds of PyTorch)."""
    return "fbgemm" in torch.backends.quantized.supported_engines


def can_run(x: torch.Tensor, codes: torch.Tensor) -> bool:
    """Whether the fast path applies: float32 activations on CPU and a 2-D int8 weight."""
    return inference_input(x) and not x.is_cuda and codes.dim() == 2 and available()


@dataclass(frozen=True)
class _Packed:
    codes: weakref.ref[torch.Tensor]
    versions: tuple[int, ...]
    others: tuple[int, ...]  # ids of scale, zero_point, bias: a replaced tensor invalidates
    packed: Any


_CACHE: dict[tuple[int, int], _Packed] = {}
_LOCK = threading.Lock()


def _versions(*tensors: torch.Tensor | None) -> tuple[int, ...]:
    return tuple(-1 if t is None else t._version for t in tensors)


def packed_weight(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    bias: torch.Tensor | None,
) -> Any:
    """fbgemm's packed form of an int8 weight (cached; never saved in a state_dict).

    The cache is keyed on the identity of the int8 tensor and bias and checked against the version
    counters of all four tensors, so an in-place change to any of them repacks.
    """
    hit = _CACHE.get((id(codes), id(bias)))
    if (
        hit is not None
        and hit.codes() is codes
        and hit.others == (id(scale), id(zero_point), id(bias))
        and hit.versions == _versions(codes, scale, zero_point, bias)
    ):
        return hit.packed
    with warnings.catch_warnings():
        # fbgemm's packing API takes a quantized tensor, a type torch has deprecated; it lives
        # only here, for the moment of packing.
        warnings.simplefilter("ignore")
        qweight = torch._make_per_channel_quantized_tensor(
            codes, scale.double(), zero_point.long(), 0
        )
        float_bias = None if bias is None else bias.detach()
        packed = torch.ops.quantized.linear_prepack(qweight, float_bias)
    entry = _Packed(weakref.ref(codes), _versions(codes, scale, zero_point, bias),
                    (id(scale), id(zero_point), id(bias)), packed)
    with _LOCK:
        for key in [k for k, e in _CACHE.items() if e.codes() is None]:
            del _CACHE[key]
        _CACHE[(id(codes), id(bias))] = entry
    return packed


def linear_dynamic(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                   zero_point: torch.Tensor, bias: torch.Tensor | None,
                   reduce_range: bool) -> torch.Tensor:
    """int8 x int8 GEMM; activations quantized per tensor from the batch's own range."""
    # fbgemm takes any leading dimensions itself; reshaping here only costs time at one token.
    return _LINEAR_DYNAMIC(x, packed_weight(codes, scale, zero_point, bias), reduce_range)


def _static(x: torch.Tensor, x_scale: float, x_zero_point: int, reduce_range: bool,
            packed: Any) -> torch.Tensor:
    if reduce_range:
        # fbgemm quantizes to 0..255; clamping to the 7-bit range first gives exactly the codes
        # 0..127 that the reference computes, and keeps vpmaddubsw from saturating.
        qr = numerics.activation_qrange(True)
        lo = (qr.qmin - x_zero_point) * x_scale
        hi = (qr.qmax - x_zero_point) * x_scale
        x = torch.clamp(x, lo, hi)
    return _LINEAR_STATIC(x, x_scale, x_zero_point, packed)


def linear_static(x: torch.Tensor, x_scale: float, x_zero_point: int, reduce_range: bool,
                  codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """int8 x int8 GEMM with calibrated activation parameters, float32 output."""
    packed = packed_weight(codes, scale, zero_point, bias)
    return _static(x, x_scale, x_zero_point, reduce_range, packed)


def linear_weight_only(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                       zero_point: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Float activations times an int8 weight, without materialising the float weight.

    The activation is split into two 7-bit int8 parts: ``x = dq(q1) + r`` and ``r ~ dq(q2)``,
    each multiplied by the int8 weight with the exact, saturation-free GEMM. The activation then
    carries ~14 bits, so the result matches float-activation x int8-weight to ~1e-4 relative
    (tested), at about twice the cost of one int8 GEMM, which is still below fp32's cost at
    small batch.
    """
    packed = packed_weight(codes, scale, zero_point, None)
    lo, hi = torch.aminmax(x)
    s1, z1 = numerics.activation_qparams(lo.item(), hi.item(), True)
    residual = x - numerics.fake_quantize(x, s1, z1, numerics.activation_qrange(True))
    rlo, rhi = torch.aminmax(residual)
    s2, z2 = numerics.activation_qparams(rlo.item(), rhi.item(), True)
    y = _static(x, s1, z1, True, packed)
    y += _static(residual, s2, z2, True, packed)
    if bias is not None:
        y += bias
    return y


def pack(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
         bias: torch.Tensor | None) -> Any:
    """fbgemm's packed form of an int8 weight, built once (the runtime graph holds it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the quantized-tensor type exists only for this call
        qweight = torch._make_per_channel_quantized_tensor(
            codes, scale.double(), zero_point.long(), 0
        )
        return torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach())


def unpack(packed: Any) -> torch.Tensor:
    """The int8 codes a packed weight was built from (exact)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qweight, _ = torch.ops.quantized.linear_unpack(packed)
        return qweight.int_repr()


# The runtime graph's calls: each a plain function around the op's C++ entry point. Calling the
# OpOverload itself runs ~1.3 us of Python per call (a scan of the arguments for fake script
# objects) on top of the kernel; torch.fx cannot name the C++ entry point in generated code, so
# a one-line function holds it (0.1 us).
def _entry(overload: Any) -> Any:
    return getattr(overload, "_op", overload)


_RAW_DYNAMIC = _entry(_LINEAR_DYNAMIC)
_RAW_DYNAMIC_RELU = _entry(torch.ops.quantized.linear_relu_dynamic.default)
_RAW_STATIC = _entry(_LINEAR_STATIC)
_RAW_STATIC_RELU = _entry(
    torch.ops.quantized.linear_with_input_q_dq_qweight_dq_relu_output_fp32.default)


def linear_dynamic_packed(x: torch.Tensor, packed: Any, reduce_range: bool) -> torch.Tensor:
    """fbgemm's dynamic int8 linear on a weight packed once (``quantized::linear_dynamic``)."""
    return _RAW_DYNAMIC(x, packed, reduce_range)


def linear_relu_dynamic_packed(x: torch.Tensor, packed: Any, reduce_range: bool) -> torch.Tensor:
    """``relu(linear_dynamic_packed(...))`` in one kernel (``quantized::linear_relu_dynamic``):
    the clamp is in fbgemm's output epilogue, bit-identical to a ReLU after it."""
    return _RAW_DYNAMIC_RELU(x, packed, reduce_range)


def linear_static_packed(x: torch.Tensor, x_scale: float, x_zero_point: int,
                         packed: Any) -> torch.Tensor:
    """fbgemm's int8 linear with calibrated activation parameters, float output."""
    return _RAW_STATIC(x, x_scale, x_zero_point, packed)


def linear_relu_static_packed(x: torch.Tensor, x_scale: float, x_zero_point: int,
                              packed: Any) -> torch.Tensor:
    """``relu(linear_static_packed(...))`` in one kernel, bit-identical."""
    return _RAW_STATIC_RELU(x, x_scale, x_zero_point, packed)


LINEAR_DYNAMIC = linear_dynamic_packed
LINEAR_STATIC = linear_static_packed
# A packed linear's call -> the same call with ReLU fused in its epilogue.
WITH_RELU: dict[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] = {
    linear_dynamic_packed: linear_relu_dynamic_packed,
    linear_static_packed: linear_relu_static_packed,
}
