"""What calibration records of a linear layer's input for SmoothQuant, AWQ and GPTQ.

One :class:`InputStatistics` observer sits on each distinct input of the quantized linears that
need it (q, k and v reading one tensor share it). Over the calibration batches it keeps, per input
channel ``j`` (the last axis):

* ``min_val[j]``, ``max_val[j]`` and ``abs_mean[j]`` (mean of ``|x_j|`` over all rows):
  SmoothQuant's ``max|X_j|``, AWQ's ``mean|X_j|``, and, in static mode, the exact per-tensor range
  of the input after it is divided by per-channel scales;
* ``hessian`` (``with_hessian``): ``H = 2/n * sum x x^T`` over all ``n`` rows, GPTQ's proxy for
  how the layer's output error depends on its weight error;
* ``samples`` (``max_samples > 0``): up to that many rows, in arrival order, on which AWQ measures
  the output error of candidate scales.

When a pass divides the input by per-channel scales ``s`` (:meth:`rescale`), every statistic is
updated exactly, so later passes see the input as it now is.
"""

from __future__ import annotations

import torch

from ..errors import CalibrationError
from ..observers import Observer


class InputStatistics(Observer):
    """Per-channel statistics of a linear's input (see the module docstring)."""

    def __init__(self, target: str, with_hessian: bool = False, max_samples: int = 0) -> None:
        super().__init__(target)
        self.with_hessian = with_hessian
        self.max_samples = max_samples
        self.rows = 0
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None
        self.abs_sum: torch.Tensor | None = None
        self.hessian: torch.Tensor | None = None
        self.sample_rows: list[torch.Tensor] = []
        self.kept = 0

    def observe(self, x: torch.Tensor, lo: float, hi: float) -> None:
        rows = x.reshape(-1, x.shape[-1])
        lo_c, hi_c = torch.aminmax(rows, dim=0)
        abs_sum = rows.abs().sum(0, dtype=torch.float64)
        if self.min_val is None or self.max_val is None or self.abs_sum is None:
            self.min_val, self.max_val, self.abs_sum = lo_c, hi_c, abs_sum
        else:
            self.min_val = torch.minimum(self.min_val, lo_c)
            self.max_val = torch.maximum(self.max_val, hi_c)
            self.abs_sum = self.abs_sum + abs_sum
        if self.with_hessian:
            self._add_hessian(rows)
        if self.kept < self.max_samples:
            take = rows[: self.max_samples - self.kept].clone()
            self.sample_rows.append(take)
            self.kept += take.shape[0]
        self.rows += rows.shape[0]

    def _add_hessian(self, rows: torch.Tensor) -> None:
        n = rows.shape[0]
        # Running mean of 2 x x^T, as GPTQ keeps it: H stays O(1) however many rows arrive.
        total = self.rows + n
        update = (rows.T @ rows).mul_(2.0 / total)
        if self.hessian is None:
            self.hessian = update
        else:
            self.hessian.mul_(self.rows / total).add_(update)

    # --- what the passes read -----------------------------------------------------------------

    def require_data(self, why: str) -> None:
        if self.batches == 0 or self.min_val is None:
            raise CalibrationError(
                f"{self.target} saw no calibration data, and {why} needs it. Pass calibration "
                "batches that reach this layer (calibration=[batch, ...]), or skip the layer."
            )

    @property
    def abs_max(self) -> torch.Tensor:
        assert self.min_val is not None and self.max_val is not None
        return torch.maximum(self.min_val.abs(), self.max_val.abs())

    @property
    def abs_mean(self) -> torch.Tensor:
        assert self.abs_sum is not None
        return (self.abs_sum / max(self.rows, 1)).float()

    def samples(self) -> torch.Tensor:
        """The kept input rows, ``[rows, K]``."""
        return torch.cat(self.sample_rows) if self.sample_rows else torch.empty(0)

    def quant_range(self) -> tuple[float, float]:
        raise CalibrationError(f"{self.target}: input statistics are not an activation range")

    # --- the input was divided by s ------------------------------------------------------------

    def rescale(self, s: torch.Tensor) -> None:
        """The input is now ``x / s`` (``s`` > 0, one per channel): update every statistic
        (none to update when no data came: a structural replay)."""
        if self.min_val is None or self.max_val is None or self.abs_sum is None:
            return
        self.min_val = self.min_val / s
        self.max_val = self.max_val / s
        self.abs_sum = self.abs_sum / s.double()
        if self.hessian is not None:
            self.hessian = self.hessian / torch.outer(s, s)
        self.sample_rows = [r / s for r in self.sample_rows]

    def range_after(self) -> tuple[float, float]:
        """The per-tensor (min, max) of the input as it now is (after any :meth:`rescale`)."""
        assert self.min_val is not None and self.max_val is not None
        return float(self.min_val.min()), float(self.max_val.max())

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, hessian={self.with_hessian}, "
                f"samples={self.kept}/{self.max_samples}")
