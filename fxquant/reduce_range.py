"""The seed toolkit's reduce-range policy: when its layers quantize activations to 7 bits so that
fxquant's int8 kernel stays exact (the compiler's own layers use pair-safe weight scales instead,
``QuantConfig.pair_safe_weights``)."""

from __future__ import annotations

from .config import Mode, QuantConfig


def kernel_safe_reduce_range(bits: int, mode: Mode = "dynamic") -> bool:
    """Whether ``bits``-bit weights need 7-bit activations to keep fxquant's int8 kernel exact:
    true for 8-bit weights with int8 activations (``QuantConfig.may_saturate``: on AVX2 CPUs
    without VNNI, pairs of u8 x s8 products saturate in 16 bits). Narrower weights keep 8-bit
    activations, as fxquant's defaults do."""
    # The seed layers quantize with plain min-max scales (no pair-safe scales), as the document
    # describes; with 8 bits they keep the kernel exact through 7-bit activations instead.
    config = QuantConfig(mode=mode, weight_bits=bits, reduce_range=False, pair_safe_weights=False)
    return config.may_saturate
