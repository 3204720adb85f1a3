"""Fast int8 convolutions on CPU: oneDNN's u8 x s8 convolution with a float32 output.

Why oneDNN (``torch.ops.onednn.qconv_pointwise``): it takes uint8 activation codes, int8 weights
and per-channel weight scales, and writes float32 directly (bias and ReLU fused), so neither mode
needs an output scale; fbgemm's ``quantized::conv2d`` must requantize its output to uint8 (a second
rounding, and a range static mode would have to calibrate). Measured with 2 threads at batch 1 on
ResNet-18's 3x3 layers, this op (activation quantization included) is 4.7-6.1x fp32 on this
project's Sapphire Rapids machine (AMX) and 1.6-2.2x with the kernels limited to AVX2
(``ONEDNN_MAX_CPU_ISA=AVX2``, the AMD Zen 3 target's ISA), against 2.0-3.4x / 1.5-2.0x for
fbgemm's static conv (docs/conv_kernels.md, ``benchmarks/bench_conv.py``).

Saturation: without VNNI or AMX (AVX2, AVX-512 without VNNI: AMD Zen 3), oneDNN multiplies with
``vpmaddubsw``, which adds the u8 x s8 products of two *adjacent input channels at one kernel tap*
in int16 and saturates (measured with ``ONEDNN_MAX_CPU_ISA=AVX2``: up to 27 activation steps off).
fxquant's pair-safe weight scales use exactly that pairing for conv weights
(:func:`fxquant.numerics.kernel_pair_sums`), which makes the kernel exact there; weights that are
not pair-safe run the reference kernel on such CPUs (:func:`packed_weight` returns None).

Activations are quantized with ``torch.quantize_per_tensor`` (one vectorised pass) and read as
uint8 without a copy; the packed weight is a cache keyed on the int8 buffer's identity and version,
as in :mod:`.fbgemm`, so an in-place change to the codes repacks, and on the input shape (oneDNN's
preferred layout depends on it; see ``_pack``).
"""

from __future__ import annotations

import functools
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from .. import cpu, numerics
from . import inference_input

# The last argument of a conv op's geometry: (stride, padding, dilation, groups).
Geometry = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int]


@functools.cache
def available() -> bool:
    """True where PyTorch was built with oneDNN's quantized convolution (x86 CPU builds)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qconv_prepack")


def can_run(x: torch.Tensor, codes: torch.Tensor) -> bool:
    """Whether the fast path may apply: a batched float32 CPU input of the weight's rank."""
    return (inference_input(x) and x.device.type == "cpu" and codes.dim() in (3, 4)
            and x.dim() == codes.dim() and available())


@dataclass(frozen=True)
class _Packed:
    codes: weakref.ref[torch.Tensor]
    zero_point: weakref.ref[torch.Tensor]
    versions: tuple[int, int]
    packed: torch.Tensor | None  # None: this kernel cannot take these weights


_CACHE: dict[tuple[Any, ...], _Packed] = {}  # insertion order = age
_LOCK = threading.Lock()
SHAPES_PER_WEIGHT = 4  # packed copies kept per int8 weight (input shapes x zero-point forms)


@functools.cache
def _consume_deprecation_warning() -> None:
    # torch warns once per process that quantized tensor types are deprecated; they serve here
    # only as fbgemm's fast quantize kernel, read back as uint8 (see ``quantize``).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.quantize_per_tensor(torch.zeros(1), 1.0, 0, torch.quint8)


def unsupported_reason(codes: torch.Tensor, zero_point: torch.Tensor,
                       reduce_range: bool = False) -> str | None:
    """Why oneDNN cannot compute with these weights on this CPU, or None. (7-bit activations
    cannot saturate a pair: 2 x 127 x 127 < 2^15.)"""
    if bool((zero_point != 0).any()):
        return "asymmetric weights (oneDNN needs weight zero-points of 0)"
    if cpu.onednn_saturates() and not reduce_range:
        peak = int(numerics.kernel_pair_sums(codes).amax()) if codes.numel() else 0
        if peak > numerics.PAIR_SUM_LIMIT:
            return "weights are not pair-safe and this CPU's int8 kernel would saturate"
    return None


def _pack(codes: torch.Tensor, zero_point: torch.Tensor, geometry: Geometry,
          x_zero_point_nonzero: bool, reduce_range: bool,
          x_shape: tuple[int, ...]) -> torch.Tensor | None:
    if unsupported_reason(codes, zero_point, reduce_range) is not None:
        return None
    stride, padding, dilation, groups = geometry
    ones = torch.ones(codes.shape[0], dtype=torch.float32)  # scales are applied per call
    # The layout oneDNN wants depends on the input's shape and on whether the activation has a
    # zero-point (a compensation term is then kept with the weights); a packed weight that differs
    # is reordered on *every* call. Packing for the real shape also keeps the query out of the
    # primitive-descriptor cache of PyTorch's oneDNN wrapper under the shape-less key other packers
    # (torch.ao's x86 backend) fill, which ignores zero-point attributes (measured: one reorder
    # per call after a torch.ao model had been built in the same process).
    return torch.ops.onednn.qconv_prepack(
        codes.contiguous(), ones, 0.5, 1 if x_zero_point_nonzero else 0,
        list(stride), list(padding), list(dilation), groups, list(x_shape),
    )


def packed_weight(codes: torch.Tensor, zero_point: torch.Tensor, geometry: Geometry,
                  x_zero_point: int, reduce_range: bool = False,
                  x_shape: tuple[int, ...] = ()) -> torch.Tensor | None:
    """oneDNN's packed copy of ``codes`` for this geometry and input shape (cached, at most
    ``SHAPES_PER_WEIGHT`` shapes per weight), or None where the reference kernel must run (see
    :func:`unsupported_reason`)."""
    flag = x_zero_point != 0
    key = (id(codes), id(zero_point), geometry, flag, reduce_range, x_shape)
    hit = _CACHE.get(key)
    versions = (codes._version, zero_point._version)
    if (
        hit is not None
        and hit.codes() is codes
        and hit.zero_point() is zero_point
        and hit.versions == versions
    ):
        return hit.packed
    entry = _Packed(weakref.ref(codes), weakref.ref(zero_point), versions,
                    _pack(codes, zero_point, geometry, flag, reduce_range, x_shape))
    with _LOCK:
        for stale in [k for k, e in _CACHE.items() if e.codes() is None or k == key]:
            del _CACHE[stale]
        same_weight = [k for k in _CACHE if k[0] == key[0]]
        for oldest in same_weight[: max(0, len(same_weight) + 1 - SHAPES_PER_WEIGHT)]:
            del _CACHE[oldest]
        _CACHE[key] = entry
    return entry.packed


def quantize(x: torch.Tensor, scale: float, zero_point: int, reduce_range: bool) -> torch.Tensor:
    """uint8 activation codes of ``x`` in ``x``'s memory layout (7-bit when ``reduce_range``)."""
    _consume_deprecation_warning()
    q = torch.quantize_per_tensor(x, scale, zero_point, torch.quint8)
    # The quint8 storage read as plain uint8: no copy (``int_repr`` would copy, at ~2x the cost
    # of the quantization itself).
    codes = torch.empty(0, dtype=torch.uint8).set_(
        q.untyped_storage(), q.storage_offset(), q.shape, q.stride()
    )
    if reduce_range:
        codes.clamp_(max=numerics.activation_qrange(True).qmax)
    return codes


def batch_range(x: torch.Tensor) -> tuple[float, float]:
    """min and max of ``x``, read in storage order (4x faster than ``aminmax`` on a channels-last
    tensor, whose strided reduction is slow)."""
    order = sorted(range(x.dim()), key=x.stride, reverse=True)  # stable: ties keep their order
    dense = x.permute(order)
    flat = dense.view(-1) if dense.is_contiguous() else x
    lo, hi = torch.aminmax(flat)
    return lo.item(), hi.item()


def _run(codes_u8: torch.Tensor, x_scale: float, x_zero_point: int, packed: torch.Tensor,
         scale: torch.Tensor, zero_point: torch.Tensor, bias: torch.Tensor | None,
         geometry: Geometry, relu: bool) -> torch.Tensor:
    stride, padding, dilation, groups = geometry
    return torch.ops.onednn.qconv_pointwise.default(
        codes_u8, x_scale, x_zero_point, packed, scale, zero_point, bias,
        list(stride), list(padding), list(dilation), groups,
        1.0, 0, torch.float32, "relu" if relu else "none", [], "",
    )


def conv_static(x: torch.Tensor, x_scale: float, x_zero_point: int, reduce_range: bool,
                codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                bias: torch.Tensor | None, geometry: Geometry, relu: bool) -> torch.Tensor | None:
    """int8 conv with calibrated activation parameters, float32 output (channels-last), or None
    where the reference kernel must run."""
    packed = packed_weight(codes, zero_point, geometry, x_zero_point, reduce_range,
                           tuple(x.shape))
    if packed is None:
        return None
    q = quantize(x, x_scale, x_zero_point, reduce_range)
    return _run(q, x_scale, x_zero_point, packed, scale, zero_point, bias, geometry, relu)


def conv_dynamic(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                 zero_point: torch.Tensor, bias: torch.Tensor | None, reduce_range: bool,
                 geometry: Geometry, relu: bool) -> torch.Tensor | None:
    """int8 conv with per-tensor activation parameters from this batch's range, or None."""
    lo, hi = batch_range(x)
    x_scale, x_zero_point = numerics.activation_qparams(lo, hi, reduce_range)
    return conv_static(x, x_scale, x_zero_point, reduce_range, codes, scale, zero_point, bias,
                       geometry, relu)
