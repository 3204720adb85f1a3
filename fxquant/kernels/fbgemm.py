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

import threading
import warnings
import weakref
from typing import Any

import torch

from .. import numerics

_CACHE: dict[tuple[int, ...], tuple[weakref.ref[torch.Tensor], Any]] = {}
_LOCK = threading.Lock()


def available() -> bool:
    """True where fbgemm's kernels are compiled in (x86 builds of PyTorch)."""
    return "fbgemm" in torch.backends.quantized.supported_engines


def can_run(x: torch.Tensor, codes: torch.Tensor) -> bool:
    """Whether the fast path applies: float32 activations on CPU and a 2-D int8 weight."""
    return (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and codes.dtype == torch.int8
        and codes.dim() == 2
        and x.shape[-1] == codes.shape[1]
        and x.numel() > 0
        and not x.requires_grad
        and available()
    )


def _key(*tensors: torch.Tensor | None) -> tuple[int, ...]:
    key: list[int] = []
    for t in tensors:
        if t is None:
            key += [0, 0]
        else:
            key += [t.data_ptr(), t._version]
    return tuple(key)


def packed_weight(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    bias: torch.Tensor | None,
) -> Any:
    """fbgemm's packed form of an int8 weight (cached; never saved in a state_dict)."""
    key = _key(codes, scale, zero_point, bias)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0]() is codes:
            return hit[1]
    with warnings.catch_warnings():
        # fbgemm's packing API takes a quantized tensor, a type torch has deprecated; it lives
        # only here, for the moment of packing.
        warnings.simplefilter("ignore")
        qweight = torch._make_per_channel_quantized_tensor(
            codes, scale.double(), zero_point.long(), 0
        )
        packed = torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach())
    with _LOCK:
        for k in [k for k, (ref, _) in _CACHE.items() if ref() is None]:
            del _CACHE[k]
        _CACHE[key] = (weakref.ref(codes), packed)
    return packed


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).contiguous()


def linear_dynamic(x, codes, scale, zero_point, bias, reduce_range: bool) -> torch.Tensor:
    """int8 x int8 GEMM; activations quantized per tensor from the batch's own range."""
    packed = packed_weight(codes, scale, zero_point, bias)
    y = torch.ops.quantized.linear_dynamic(_as_2d(x), packed, reduce_range)
    return y.reshape(*x.shape[:-1], codes.shape[0])


def _static(x2d: torch.Tensor, x_scale: float, x_zero_point: int, reduce_range: bool, packed):
    if reduce_range:
        # fbgemm quantizes to 0..255; clamping to the 7-bit range first gives exactly the codes
        # 0..127 that the reference computes, and keeps vpmaddubsw from saturating.
        qr = numerics.activation_qrange(True)
        lo = (qr.qmin - x_zero_point) * x_scale
        hi = (qr.qmax - x_zero_point) * x_scale
        x2d = torch.clamp(x2d, lo, hi)
    return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
        x2d, x_scale, x_zero_point, packed
    )


def linear_static(
    x, x_scale: float, x_zero_point: int, reduce_range: bool, codes, scale, zero_point, bias
) -> torch.Tensor:
    """int8 x int8 GEMM with calibrated activation parameters, float32 output."""
    packed = packed_weight(codes, scale, zero_point, bias)
    y = _static(_as_2d(x), x_scale, x_zero_point, reduce_range, packed)
    return y.reshape(*x.shape[:-1], codes.shape[0])


def linear_weight_only(x, codes, scale, zero_point, bias) -> torch.Tensor:
    """Float activations times an int8 weight, without materialising the float weight.

    The activation is split into two 7-bit int8 parts: ``x = dq(q1) + r`` and ``r ~ dq(q2)``,
    each multiplied by the int8 weight with the exact, saturation-free GEMM. The activation then
    carries ~14 bits, so the result matches float-activation x int8-weight to ~1e-4 relative
    (tested), at about twice the cost of one int8 GEMM, which is still below fp32's cost at
    small batch.
    """
    packed = packed_weight(codes, scale, zero_point, None)
    x2d = _as_2d(x)
    lo, hi = torch.aminmax(x2d)
    s1, z1 = numerics.activation_qparams(lo.item(), hi.item(), True)
    qr = numerics.activation_qrange(True)
    residual = x2d - numerics.fake_quantize(x2d, s1, z1, qr)
    rlo, rhi = torch.aminmax(residual)
    s2, z2 = numerics.activation_qparams(rlo.item(), rhi.item(), True)
    y = _static(x2d, s1, z1, True, packed)
    y += _static(residual, s2, z2, True, packed)
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], codes.shape[0])
