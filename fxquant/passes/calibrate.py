"""Calibrate: run representative batches through the observed graph.

Requires: an observed graph (``insert_observers``) and, in static mode, at least one batch in
``ctx.calibration``.
Guarantees: every activation observer has seen every batch that reaches it; NaN/Inf in a batch is
refused with the batch and input named. The graph itself is not changed.
Why: static mode needs activation ranges measured ahead of time; weight-only and dynamic modes
need none, and this pass then returns at once.

How a batch maps onto the model's inputs:
  * a ``dict`` is passed as keyword arguments;
  * a ``tuple``/``list`` is passed positionally; when it is longer than the model's example inputs
    (a DataLoader of ``(inputs, labels)``), only the first ``len(example_inputs)`` items are used;
  * anything else (one tensor) is the model's single input.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx

from ..errors import CalibrationError, NonFiniteError
from ..observers import Observer
from .infra import PassContext, PassResult

log = logging.getLogger("fxquant")
_PROGRESS_EVERY_S = 2.0


def split_batch(batch: Any, n_inputs: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) for one calibration batch; see the module docstring."""
    if isinstance(batch, dict):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        items = tuple(batch)
        return (items[:n_inputs] if n_inputs and len(items) > n_inputs else items), {}
    return (batch,), {}


def _check_finite(args: tuple[Any, ...], kwargs: dict[str, Any], index: int) -> None:
    named = [(f"input {i}", a) for i, a in enumerate(args)] + list(kwargs.items())
    for name, value in named:
        floating = isinstance(value, torch.Tensor) and value.is_floating_point()
        if floating and not torch.isfinite(value).all():
            raise NonFiniteError(
                f"calibration batch {index}, {name}, holds NaN or Inf. Clean the calibration "
                "data: a non-finite value would make every downstream scale NaN."
            )


def run_batches(gm: fx.GraphModule, batches: Iterable[Any], n_inputs: int, progress: bool) -> int:
    """Run ``batches`` through ``gm``; returns how many ran."""
    count, start, last = 0, time.perf_counter(), time.perf_counter()
    with torch.no_grad():
        for count, batch in enumerate(batches, 1):
            args, kwargs = split_batch(batch, n_inputs)
            _check_finite(args, kwargs, count - 1)
            gm(*args, **kwargs)
            now = time.perf_counter()
            if now - last > _PROGRESS_EVERY_S:
                last = now
                message = f"fxquant: calibrated {count} batches ({now - start:.1f} s)"
                log.info(message)
                if progress:
                    print(message, file=sys.stderr, flush=True)
    return count


def run_calibrate(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    observers = [m for m in gm.modules() if isinstance(m, Observer)]
    if not observers:
        return PassResult(gm, False)
    if ctx.calibration is None:
        raise CalibrationError(
            "static mode needs calibration data: pass calibration=[batch, ...] (or a DataLoader) "
            "to fxquant.quantize, or use mode='dynamic', which needs none."
        )
    count = run_batches(gm, ctx.calibration, len(ctx.example_inputs), ctx.progress)
    if count == 0:
        raise CalibrationError(
            "the calibration set is empty: static mode needs at least one batch to measure "
            "activation ranges. Pass a non-empty list or DataLoader, or use mode='dynamic'."
        )
    gm.meta.setdefault("fxquant", {})["calibration_batches"] = count
    return PassResult(gm, False)
