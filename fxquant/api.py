"""fxquant's entry points: ``quantize`` and the staged API it is built from.

    observed = fxquant.prepare(model, example_inputs, config)   # capture + observers
    fxquant.calibrate(observed, batches)                         # static mode: measure ranges
    qmodel = fxquant.convert(observed)                           # int8 buffers + fused ops

``quantize`` runs the three steps. None of them changes the user's model: capture works on a copy,
and ``convert`` copies the observed model before rewriting it.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch.fx as fx
from torch import nn

from . import passes
from .capture import as_input_tuple, capture
from .config import QuantConfig
from .errors import FxQuantError
from .graph import kind_of, meta

log = logging.getLogger("fxquant")


def _record(gm: fx.GraphModule) -> dict[str, Any]:
    return gm.meta.setdefault("fxquant", {})


def _context(gm: fx.GraphModule, **overrides: Any) -> passes.PassContext:
    record = _record(gm)
    ctx = passes.PassContext(
        config=record["config"],
        example_inputs=record.get("example_inputs", ()),
        dump_dir=record.get("dump_dir"),
    )
    for key, value in overrides.items():
        setattr(ctx, key, value)
    return ctx


def _stage(gm: nn.Module, expected: str, step: str) -> fx.GraphModule:
    stage = getattr(gm, "meta", {}).get("fxquant", {}).get("stage") if isinstance(
        gm, fx.GraphModule) else None
    if stage != expected:
        raise FxQuantError(
            f"fxquant.{step} expects a model returned by fxquant.prepare; got "
            f"{type(gm).__name__} (stage: {stage or 'not an fxquant model'})."
        )
    return gm


def prepare(
    model: nn.Module,
    example_inputs: Any,
    config: QuantConfig | None = None,
    *,
    dump_dir: str | Path | None = None,
) -> fx.GraphModule:
    """Capture ``model`` (a copy of it) and insert observers. Returns the observed GraphModule.

    ``dump_dir`` writes the generated code after every pass, for debugging.
    """
    config = config or QuantConfig()
    if config.may_saturate:
        warnings.warn(
            "8-bit weights without pair-safe scales meet 8-bit activations: on AVX2 CPUs without "
            "VNNI the int8 kernel adds pairs of products in 16 bits and can saturate. Keep "
            "QuantConfig.pair_safe_weights=True (symmetric per-channel weights), or set "
            "reduce_range=True or weight_bits=7, unless this CPU has VNNI.",
            stacklevel=2,
        )
    inputs = as_input_tuple(example_inputs)
    gm = capture(model, inputs, config)
    record = _record(gm)
    record.update(config=config, example_inputs=inputs,
                  dump_dir=Path(dump_dir) if dump_dir else None)
    ctx = _context(gm)
    gm = passes.run_passes(gm, passes.PREPARE, ctx)
    record = _record(gm)
    record.update(stage="prepared", timings=dict(ctx.timings), refusals=dict(ctx.refusals))
    if not any(meta(n).get("quantize") for n in gm.graph.nodes if kind_of(n)):
        warnings.warn(
            f"fxquant found nothing to quantize in {type(model).__name__} (no Linear, Conv1d/2d "
            "or Embedding with a float32 weight outside QuantConfig.skip); the model runs "
            "unchanged.",
            stacklevel=2,
        )
    return gm


def calibrate(
    observed: fx.GraphModule, batches: Iterable[Any], *, progress: bool = False
) -> fx.GraphModule:
    """Run calibration ``batches`` through an observed model (in place; returns it).

    See :mod:`fxquant.passes.calibrate` for how a batch maps onto the model's inputs.
    """
    gm = _stage(observed, "prepared", "calibrate")
    ctx = _context(gm, calibration=batches, progress=progress)
    return passes.run_passes(gm, passes.CALIBRATE, ctx)


def convert(observed: fx.GraphModule) -> fx.GraphModule:
    """Lower an observed (and, in static mode, calibrated) model to real int8. Returns a new
    GraphModule; the observed model is left as it was."""
    gm = copy.deepcopy(_stage(observed, "prepared", "convert"))
    ctx = _context(gm)
    if ctx.config.mode == "static" and "calibration_batches" not in _record(gm):
        passes.run_passes(gm, passes.CALIBRATE, ctx)  # raises the "no calibration data" error
    gm = passes.run_passes(gm, passes.CONVERT, ctx)
    record = _record(gm)
    record["stage"] = "converted"
    record["timings"] = {**record.get("timings", {}), **ctx.timings}
    record["refusals"] = {**record.get("refusals", {}), **ctx.refusals}
    record.pop("example_inputs", None)
    return gm


def quantize(
    model: nn.Module,
    example_inputs: Any,
    *,
    calibration: Iterable[Any] | None = None,
    config: QuantConfig | None = None,
    progress: bool = False,
    dump_dir: str | Path | None = None,
) -> fx.GraphModule:
    """Quantize a float model; returns a new GraphModule that runs int8 kernels.

    Args:
        model: the float model. It is not changed.
        example_inputs: a tuple of inputs (or one tensor) the model accepts; used to check the
            capture and, for static mode, to know how many inputs a calibration batch holds.
        calibration: representative batches (list, iterable or DataLoader). Required in static
            mode; ignored otherwise.
        config: a :class:`QuantConfig`; default dynamic int8, per-channel symmetric weights.
        progress: print calibration progress to stderr on long runs.
        dump_dir: write the code after every pass there, for debugging.
    """
    config = config or QuantConfig()
    observed = prepare(model, example_inputs, config, dump_dir=dump_dir)
    if config.mode == "static":
        # With calibration=None this raises the "static mode needs calibration data" error.
        calibrate(observed, calibration, progress=progress)  # type: ignore[arg-type]
    return convert(observed)
