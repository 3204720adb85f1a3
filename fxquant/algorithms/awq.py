"""AWQ: activation-aware weight quantization (Lin et al., 2024), the scale search.

Weights that meet large activations matter most. AWQ scales input channel ``j`` of the weight up by
``s_j = mean|X_j|^alpha`` (normalised so that ``sqrt(max s * min s) = 1``) before quantizing, and
divides the input by ``s`` (folded into the previous LayerNorm or an explicit multiply), so the
salient columns get a finer grid. ``alpha`` is searched on a grid in [0, 1): for each candidate the
quantized layers' output error on stored calibration inputs is measured, and the smallest wins.
``alpha = 0`` is ``s = 1``, plain round-to-nearest, so on the calibration rows the chosen scale is
never worse than RTN.

Left out: AWQ's second search, clipping each group's range (``auto_clip``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .schemes import WeightScheme


@dataclass(frozen=True)
class AwqResult:
    """The per-input-channel scale AWQ chose, at which ``alpha``, and its error there."""
    scale: torch.Tensor  # s, one per input channel (float32)
    alpha: float
    error: float  # sum over the layers of ||X W^T - X Q(W s)^T / ...||^2 at the chosen alpha
    rtn_error: float  # the same at alpha = 0 (plain round-to-nearest)


def awq_scale(mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    """AWQ's scale ``s = mean|x| ** alpha``, normalised so that ``max(s) * min(s) = 1``."""
    s = mean_abs.float().clamp(min=1e-4).pow(alpha)
    return s / (s.max() * s.min()).sqrt()


def output_error(x: torch.Tensor, weights: Sequence[torch.Tensor],
                 schemes: Sequence[WeightScheme], s: torch.Tensor) -> float:
    """sum_i ||x W_i^T - x (Q_i(W_i diag(s)) diag(1/s))^T||^2."""
    total = 0.0
    for w, scheme in zip(weights, schemes, strict=True):
        w_hat = scheme.fake_quantize(w * s) / s
        total += float(((x @ (w - w_hat).T) ** 2).sum())
    return total


def awq_search(
    x: torch.Tensor, weights: Sequence[torch.Tensor], schemes: Sequence[WeightScheme],
    grid: int = 20,
) -> AwqResult:
    """The scale that minimises the output error of the layers reading the rows ``x`` [n, K]
    (``weights[i]`` quantized to ``schemes[i]``)."""
    x = x.float()
    weights = [w.detach().float() for w in weights]
    mean_abs = x.abs().mean(dim=0)
    best: tuple[float, float, torch.Tensor] | None = None
    rtn = float("nan")
    for i in range(grid):
        alpha = i / grid
        s = awq_scale(mean_abs, alpha)
        err = output_error(x, weights, schemes, s)
        if i == 0:
            rtn = err
        if best is None or err < best[0]:
            best = (err, alpha, s)
    assert best is not None
    return AwqResult(best[2].contiguous(), best[1], best[0], rtn)
