"""Calibrate: run representative batches through the observed graph.

Requires: an observed graph (``insert_observers``) and, in static mode, at least one batch in
``ctx.calibration``.
Guarantees: every activation observer has seen every batch that reaches it; NaN/Inf in a batch is
refused with the batch and input named. The graph itself is not changed.
Why: static mode needs activation ranges measured ahead of time; weight-only and dynamic modes
need none, and this pass then returns at once.

How a batch maps onto the model's inputs: :mod:`fxquant.inputs` (a tuple is positional, a dict
keyword arguments, one tensor the single input; a batch takes the example's form).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx

from ..errors import CalibrationError
from ..inputs import as_model_inputs, calibration_batches
from ..observers import Observer
from ..progress import progress_bar
from .infra import Pass, PassContext, PassResult


def run_batches(gm: fx.GraphModule, batches: Iterable[Any], example: Any, progress: bool) -> int:
    """Run ``batches`` through ``gm`` (each checked against the example's form); returns how many
    ran."""
    count = 0
    with torch.no_grad():
        for inputs in progress_bar(calibration_batches(batches, as_model_inputs(example)),
                                   "fxquant: calibrate", progress or None):
            inputs.call(gm)
            count += 1
    return count


def run_calibrate(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Run the pass; see the module docstring for what it requires and guarantees."""
    observers = [m for m in gm.modules() if isinstance(m, Observer)]
    if not observers:
        return PassResult(gm, False)
    if ctx.calibration is None:
        raise CalibrationError(
            "static mode needs calibration data: pass calibration=[batch, ...] (or a DataLoader) "
            "to fxquant.quantize, or use mode='dynamic', which needs none."
        )
    count = run_batches(gm, ctx.calibration, ctx.example_inputs, ctx.progress)
    if count == 0:
        raise CalibrationError(
            "the calibration set is empty: static mode needs at least one batch to measure "
            "activation ranges. Pass a non-empty list or DataLoader, or use mode='dynamic'."
        )
    gm.meta.setdefault("fxquant", {})["calibration_batches"] = count
    return PassResult(gm, False)


# Calibration only runs data; that the graph stays as it was is checked for every pass that
# returns modified=False.
CALIBRATE = Pass("calibrate", run_calibrate)
