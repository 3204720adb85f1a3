"""Observers: modules that watch tensors during calibration and summarise their range.

An observer is inserted into the graph as an identity call; it records statistics and returns its
input unchanged. ``quant_range()`` gives the (min, max) that the numerics module turns into a scale
and zero-point. Non-finite values are refused with the name of the tensor being observed, because
one NaN would silently poison every scale downstream.
"""

from __future__ import annotations

import torch
from torch import nn

from .algorithms.schemes import Quantized, WeightScheme
from .config import QuantConfig
from .errors import CalibrationError, NonFiniteError


class Observer(nn.Module):
    """Base class. ``target`` names what is observed, for error messages."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.batches = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.numel() == 0:
            return x
        lo, hi = torch.aminmax(x.detach().float())
        if not (torch.isfinite(lo) and torch.isfinite(hi)):
            raise NonFiniteError(
                f"{self.target} produced NaN or Inf during calibration (batch {self.batches}). "
                "Check the calibration data and the layers before it; fxquant cannot derive a "
                "quantization range from non-finite values."
            )
        self.observe(x.detach().float(), lo.item(), hi.item())
        self.batches += 1
        return x

    def observe(self, x: torch.Tensor, lo: float, hi: float) -> None:
        raise NotImplementedError

    def quant_range(self) -> tuple[float, float]:
        raise NotImplementedError

    def _require_data(self) -> None:
        if self.batches == 0:
            raise CalibrationError(
                f"{self.target} saw no calibration data: no batch reached it. Pass calibration "
                "batches that exercise this layer, or skip it in QuantConfig.skip."
            )

    def extra_repr(self) -> str:
        return f"target={self.target!r}, batches={self.batches}"


class MinMaxObserver(Observer):
    """Running min and max over all batches."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.min_val = float("inf")
        self.max_val = float("-inf")

    def observe(self, x: torch.Tensor, lo: float, hi: float) -> None:
        self.min_val = min(self.min_val, lo)
        self.max_val = max(self.max_val, hi)

    def quant_range(self) -> tuple[float, float]:
        self._require_data()
        return self.min_val, self.max_val


class MovingAverageMinMaxObserver(Observer):
    """Exponential moving average of each batch's min and max: one odd batch moves it little."""

    def __init__(self, target: str, momentum: float) -> None:
        super().__init__(target)
        self.momentum = momentum
        self.min_val = 0.0
        self.max_val = 0.0

    def observe(self, x: torch.Tensor, lo: float, hi: float) -> None:
        if self.batches == 0:
            self.min_val, self.max_val = lo, hi
        else:
            m = self.momentum
            self.min_val = (1 - m) * self.min_val + m * lo
            self.max_val = (1 - m) * self.max_val + m * hi

    def quant_range(self) -> tuple[float, float]:
        self._require_data()
        return self.min_val, self.max_val


class PercentileObserver(Observer):
    """Histogram of values; the range keeps ``percentile`` percent of the mass on each side.

    The histogram covers [-absmax, absmax] of all data seen so far; when a wider batch arrives the
    old counts are re-binned onto the wider grid, so the result does not depend on batch order
    beyond one bin width.
    """

    histogram: torch.Tensor  # a buffer (not saved): counts over [-edge, edge]

    def __init__(self, target: str, percentile: float, bins: int = 2048) -> None:
        super().__init__(target)
        self.percentile = percentile
        self.bins = bins
        self.edge = 0.0
        self.register_buffer("histogram", torch.zeros(bins, dtype=torch.float64), persistent=False)

    def observe(self, x: torch.Tensor, lo: float, hi: float) -> None:
        edge = max(abs(lo), abs(hi), 1e-12)
        if edge > self.edge:
            if self.edge > 0:
                self.histogram = self._rebin(self.histogram, self.edge, edge)
            self.edge = edge
        self.histogram += torch.histc(x.double(), self.bins, -self.edge, self.edge)

    def _rebin(self, hist: torch.Tensor, old: float, new: float) -> torch.Tensor:
        centres = torch.linspace(-old, old, self.bins + 1, dtype=torch.float64)
        centres = (centres[:-1] + centres[1:]) / 2
        idx = ((centres + new) / (2 * new) * self.bins).long().clamp(0, self.bins - 1)
        out = torch.zeros_like(hist)
        out.index_add_(0, idx, hist)
        return out

    def quant_range(self) -> tuple[float, float]:
        self._require_data()
        cdf = torch.cumsum(self.histogram, 0)
        total = cdf[-1].item()
        tail = total * (100.0 - self.percentile) / 100.0
        edges = torch.linspace(-self.edge, self.edge, self.bins + 1, dtype=torch.float64)
        lo_idx = int(torch.searchsorted(cdf, torch.tensor(tail, dtype=torch.float64)))
        hi_idx = int(torch.searchsorted(cdf, torch.tensor(total - tail, dtype=torch.float64)))
        return float(edges[lo_idx]), float(edges[min(hi_idx + 1, self.bins)])


def make_activation_observer(config: QuantConfig, target: str) -> Observer:
    """The activation observer that ``config.activation_observer`` names."""
    if config.activation_observer == "moving_average":
        return MovingAverageMinMaxObserver(target, config.moving_average_momentum)
    if config.activation_observer == "percentile":
        return PercentileObserver(target, config.percentile)
    return MinMaxObserver(target)


class WeightObserver(nn.Module):
    """Marks a weight for quantization and carries its scheme.

    Weights are known before calibration, so this observer needs no data: it checks the weight is
    finite when it is created and quantizes it when the graph is lowered.
    """

    def __init__(
        self, target: str, bits: int, symmetric: bool, per_channel: bool, pair_safe: bool = False,
        group_size: int | None = None,
    ) -> None:
        super().__init__()
        self.target = target
        self.bits = bits
        self.symmetric = symmetric
        self.per_channel = per_channel
        self.pair_safe = pair_safe  # scales keep AVX2 int8 kernels from saturating (numerics)
        self.group_size = group_size  # set: one scale per group of input channels
        self.axis = 0  # output channels of Linear/Conv weights, rows of Embedding tables
        # Codes chosen by an algorithm (GPTQ) instead of round-to-nearest at lowering.
        self.precomputed: Quantized | None = None

    def scheme(self) -> WeightScheme:
        """The grid this weight is quantized to."""
        return WeightScheme(self.bits, self.symmetric, self.per_channel, self.group_size,
                            self.pair_safe)

    def quantize(self, w: torch.Tensor) -> Quantized:
        """The weight's codes: what an algorithm chose, else round-to-nearest."""
        return self.precomputed if self.precomputed is not None else self.scheme().quantize(w)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def check_finite(self, w: torch.Tensor) -> None:
        if not torch.isfinite(w).all():
            bad = int((~torch.isfinite(w)).sum())
            raise NonFiniteError(
                f"weight {self.target} holds {bad} NaN/Inf value(s). Fix or re-initialise that "
                "layer before quantizing, or skip it with QuantConfig(skip=(...,))."
            )

    def extra_repr(self) -> str:
        granularity = "per_channel" if self.per_channel else "per_tensor"
        if self.group_size:
            granularity = f"per_group({self.group_size})"
        symmetry = "symmetric" if self.symmetric else "asymmetric"
        safe = ", pair_safe" if self.pair_safe else ""
        return f"target={self.target!r}, bits={self.bits}, {granularity}, {symmetry}{safe}"
