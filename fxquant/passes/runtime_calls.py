"""The functions a runtime (packed) graph calls in place of fxquant's fused ops.

Each takes the activation and what ``pack_weights`` prepared once at convert time (a packed
weight, or a tuple of the layer's tensors held as one plain attribute) and calls the fast kernel
with no per-call preparation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..kernels import dynamic, fbgemm, weight_only


def embedding_packed(indices: torch.Tensor, table: tuple) -> torch.Tensor:
    """The runtime gather of an int8 table: ``table`` is (codes, scale [V, 1], zero_point [V, 1]
    or None). Gathers int8 rows and dequantizes only those, in three plain tensor ops."""
    codes, scale, zero_point = table
    flat = indices.reshape(-1)
    rows = codes.index_select(0, flat).to(torch.float32)
    if zero_point is not None:
        rows -= zero_point.index_select(0, flat)
    rows *= scale.index_select(0, flat)
    return rows.view(*indices.shape, codes.shape[1])


def linear_dynamic_per_token_packed(x: torch.Tensor, packed: Any, reduce_range: bool,
                                    bias: torch.Tensor | None) -> torch.Tensor:
    """The runtime call of a per-token dynamic layer: rows divided by their abs-max, fbgemm's
    dynamic GEMM on the packed weight (packed without the bias), rows scaled back, bias added;
    what ``fxquant::linear_dynamic_per_token`` computes on its fast path."""
    scaled, r = dynamic.divide_rows_by_absmax(x)
    return dynamic.scale_rows_add_bias_(fbgemm.LINEAR_DYNAMIC(scaled, packed, reduce_range), r,
                                        bias)


def linear_weight_only_packed(x: torch.Tensor, layer: tuple) -> torch.Tensor:
    """The runtime call of a weight-only layer: ``layer`` is (codes, scale, bias)."""
    return weight_only.linear_int8(x, *layer)




def linear_weight_only_blocked(x: torch.Tensor, layer: tuple) -> torch.Tensor:
    """The runtime call of a weight-only layer on the panel layout: ``layer`` is (blocked codes
    ``[ceil(N / 16), K, 16]``, scale, bias), see :func:`fxquant.kernels.packing.block_int8`."""
    return weight_only.linear_int8_blocked(x, *layer)


def linear_dynamic_vnni(x: torch.Tensor, layer: dynamic.VnniLinear,
                        reduce_range: bool) -> torch.Tensor:
    """The runtime call of a dynamic layer on fxquant's VNNI kernel (decode-tuned packing)."""
    return dynamic.linear(x, layer, reduce_range)


def linear_relu_dynamic_vnni(x: torch.Tensor, layer: dynamic.VnniLinear,
                             reduce_range: bool) -> torch.Tensor:
    """``relu(linear_dynamic_vnni(...))``, the clamp in the kernel's epilogue (bit-identical)."""
    return dynamic.linear(x, layer, reduce_range, relu=True)


def linear_dynamic_per_token_vnni(x: torch.Tensor, layer: dynamic.VnniLinear,
                                  reduce_range: bool) -> torch.Tensor:
    """The runtime call of a per-token dynamic layer on fxquant's VNNI kernel (rows quantized
    and scaled back inside the op, the bias after)."""
    return dynamic.linear(x, layer, reduce_range, per_token=True)


# A packed linear's call -> the same call with ReLU fused in its epilogue (fuse_linear_relu).
WITH_RELU: dict[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] = {
    **fbgemm.WITH_RELU, linear_dynamic_vnni: linear_relu_dynamic_vnni}
