"""SmoothQuant's migration scales (Xiao et al., 2023).

For a linear ``y = x W^T`` whose input has outlier channels, per-input-channel scales ``s`` move
part of the outliers' magnitude from the activation to the weight:

    s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)        y = (x / s) (W diag(s))^T

which is the same function in exact arithmetic, with an activation that is easier to quantize per
tensor. ``alpha`` = 0 leaves the activation as it is, 1 moves everything onto the weight. Layers
reading one input share one ``s`` (their weights' column maxima are combined).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_FLOOR = 1e-5


def smoothquant_scales(
    act_abs_max: torch.Tensor, weights: Sequence[torch.Tensor], alpha: float
) -> torch.Tensor:
    """``s`` (float32, one per input channel) for an input with per-channel abs-max
    ``act_abs_max`` read by linears with ``weights`` ([N_i, K] each).

    A channel the calibration never saw active (abs-max 0) keeps ``s = 1``: dividing it by a tiny
    scale would turn any later non-zero value into an outlier.
    """
    w_max = torch.stack([w.detach().abs().amax(dim=0) for w in weights]).amax(dim=0).float()
    a = act_abs_max.float()
    s = a.clamp(min=_FLOOR).pow(alpha) / w_max.clamp(min=_FLOOR).pow(1.0 - alpha)
    s = torch.where(a > 0, s.clamp(min=_FLOOR), torch.ones_like(s))
    return s.contiguous()
