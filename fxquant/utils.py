"""The seed document's ``utils`` module: ``symmetric_quantize`` (docs/seed_toolkit.md).

fxquant's own helpers live by concern: :mod:`fxquant.straight_through` (the straight-through
estimator and ``symmetric_quantize``), :mod:`fxquant.reduce_range` (the seed layers'
reduce-range policy), :mod:`fxquant.batches`, :mod:`fxquant.measure` (size, latency, peak
memory) and :mod:`fxquant.metrics` (accuracy, output error).
"""

from __future__ import annotations

from .straight_through import symmetric_quantize

__all__ = ["symmetric_quantize"]
