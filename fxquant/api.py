"""fxquant's entry points: ``quantize`` and the staged API it is built from.

    observed = fxquant.prepare(model, example_inputs, config)   # capture + observers
    fxquant.calibrate(observed, batches)                         # static mode: measure ranges
    qmodel = fxquant.convert(observed)                           # int8 buffers + fused ops

``quantize`` runs the three steps. None of them changes the user's model: capture works on a copy,
and ``convert`` copies the observed model before rewriting it.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch.fx as fx
from torch import nn

from . import passes
from .capture import capture, check_model
from .config import QuantConfig
from .errors import CalibrationError, CaptureError, FxQuantError
from .graph import kind_of, meta
from .inputs import ModelInputs, as_model_inputs
from .record import QuantRecord, attach, record_of, stage_of
from .regions.compile import (
    calibrate_regions,
    convert_regions,
    prepare_regions,
    stamp_converted,
    whole_model_record,
)
from .regions.shell import share_copy, storages, unshare

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


def _expect_stage(gm: nn.Module, expected: str, step: str) -> fx.GraphModule:
    """``gm``, a GraphModule at stage ``expected``; else the error that says what ``step`` needs."""
    stage = stage_of(gm)
    if stage != expected or not isinstance(gm, fx.GraphModule):
        raise FxQuantError(
            f"fxquant.{step} expects a model returned by fxquant.prepare; got "
            f"{type(gm).__name__} (stage: {stage or 'not an fxquant model'})."
        )
    return gm


def _is_hf_model(model: nn.Module) -> bool:
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(model, transformers.PreTrainedModel)


def _whole_model(model: nn.Module, inputs: ModelInputs, config: QuantConfig) -> bool:
    """Whether to capture ``model`` whole (one GraphModule) rather than region by region."""
    if config.capture == "regions":
        return False
    return config.capture != "auto" or not _is_hf_model(model)


def prepare(
    model: nn.Module,
    example_inputs: Any,
    config: QuantConfig | None = None,
    *,
    progress: bool | None = None,
    dump_dir: str | Path | None = None,
) -> nn.Module:
    """Capture ``model`` (a copy of it) and insert observers. Returns the observed model.

    ``example_inputs``: a tuple (positional), a dict or tokenizer output (keyword arguments) or
    one tensor (:mod:`fxquant.inputs`). ``dump_dir`` writes the generated code after every pass.
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
    check_model(model)
    inputs = as_model_inputs(example_inputs)
    dump = Path(dump_dir) if dump_dir else None
    whole_model_failure = ""
    if _whole_model(model, inputs, config):
        try:
            return _prepare_whole(model, inputs, config, dump)
        except CaptureError as exc:
            if config.capture != "auto":
                raise
            whole_model_failure = str(exc)
            log.info("fxquant: %s; quantizing region by region instead", exc)
    observed = prepare_regions(model, inputs, config, progress=progress, dump_dir=dump)
    record = record_of(observed)
    assert record is not None
    record.whole_model_failure = whole_model_failure
    _warn_if_nothing(observed, model)
    _warn_float_modules(record)
    return observed


def _warn_float_modules(record: QuantRecord) -> None:
    stuck = [f for f in record.float_modules if "QuantConfig.skip" not in f.reason]
    if stuck:
        listing = "; ".join(f"{f.name} ({f.module_type}): {f.reason}" for f in stuck)
        warnings.warn(f"fxquant left these modules' weights in float: {listing}", stacklevel=3)


def _warn_if_nothing(observed: nn.Module, model: nn.Module) -> None:
    if not any(meta(n).get("quantize") for gm in observed.modules()
               if isinstance(gm, fx.GraphModule) for n in gm.graph.nodes if kind_of(n)):
        warnings.warn(
            f"fxquant found nothing to quantize in {type(model).__name__} (no Linear, Conv1d/2d "
            "or Embedding with a float32 weight outside QuantConfig.skip); the model runs "
            "unchanged.",
            stacklevel=3,
        )


def _prepare_whole(
    model: nn.Module, inputs: ModelInputs, config: QuantConfig, dump_dir: Path | None
) -> fx.GraphModule:
    gm = capture(model, inputs, config)
    record = _record(gm)
    record.update(config=config, example_inputs=inputs, dump_dir=dump_dir)
    ctx = _context(gm)
    gm = passes.run_passes(gm, passes.PREPARE, ctx)
    record = _record(gm)
    record.update(stage="prepared", timings=dict(ctx.timings), refusals=dict(ctx.refusals))
    _warn_if_nothing(gm, model)
    return gm


def calibrate(
    observed: nn.Module, batches: Iterable[Any], *, progress: bool | None = None
) -> nn.Module:
    """Run calibration ``batches`` through an observed model (in place; returns it).

    A batch takes the example's form (:mod:`fxquant.inputs`): a tuple, a dict / tokenizer output,
    or one tensor; ``batches`` is a list, an iterable or a DataLoader of them.
    """
    if _is_region_model(observed, "prepared", "calibrate"):
        calibrate_regions(observed, batches, progress=progress)
        return observed
    gm = _expect_stage(observed, "prepared", "calibrate")
    ctx = _context(gm, calibration=batches, progress=bool(progress))
    return passes.run_passes(gm, passes.CALIBRATE, ctx)


def _is_region_model(model: nn.Module, expected: str, step: str) -> bool:
    record = record_of(model)
    if record is None or isinstance(model, fx.GraphModule):
        return False
    if record.stage not in (expected, "calibrated"):
        raise FxQuantError(
            f"fxquant.{step} expects a model returned by fxquant.prepare; got "
            f"{type(model).__name__} (stage: {record.stage})."
        )
    return True


def convert(observed: nn.Module, *, progress: bool | None = None) -> nn.Module:
    """Lower an observed (and, in static mode, calibrated) model to real int8. Returns a new
    model; the observed model is left as it was. A model from ``fxquant.prepare_qat`` is
    lowered with what it learned (:mod:`fxquant.qat`)."""
    from .qat import convert_qat, is_qat_model  # late: fxquant.qat builds on this module

    if is_qat_model(observed):
        return convert_qat(observed, progress=progress)
    if _is_region_model(observed, "prepared", "convert"):
        return convert_regions(observed, progress=progress)
    source = _expect_stage(observed, "prepared", "convert")
    user_storages = storages(source)
    gm = share_copy(source)
    ctx = _context(gm)
    if ctx.config.mode == "static" and "calibration_batches" not in _record(gm):
        passes.run_passes(gm, passes.CALIBRATE, ctx)  # raises the "no calibration data" error
    gm = passes.run_passes(gm, passes.CONVERT, ctx)
    stamp_converted(gm)
    unshare(gm, user_storages)
    gm = passes.run_passes(gm, passes.RUNTIME, ctx)
    record = _record(gm)
    record["stage"] = "converted"
    record["timings"] = {**record.get("timings", {}), **ctx.timings}
    record["refusals"] = {**record.get("refusals", {}), **ctx.refusals}
    record.pop("example_inputs", None)
    attach(gm, whole_model_record(gm))
    return gm


def quantize(
    model: nn.Module,
    example_inputs: Any,
    *,
    calibration: Iterable[Any] | None = None,
    config: QuantConfig | None = None,
    progress: bool | None = None,
    dump_dir: str | Path | None = None,
) -> nn.Module:
    """Quantize a float model; returns a new model that runs int8 kernels.

    Args:
        model: the float model. It is not changed.
        example_inputs: what the model is called with (:mod:`fxquant.inputs`): a tuple of
            positional inputs, a dict or tokenizer output of keyword inputs, or one tensor.
        calibration: representative batches in the example's form (list, iterable or
            DataLoader). Required in static mode and by SmoothQuant, GPTQ and AWQ
            (``QuantConfig.calibration_needed_by``); ignored otherwise.
        config: a :class:`QuantConfig`; default dynamic int8, per-channel symmetric weights.
        progress: progress bars on long stages (None: when stderr is a terminal; False: never).
        dump_dir: write the code after every pass there, for debugging.

    Returns a ``torch.fx.GraphModule`` for a model captured whole, or, for Hugging Face models
    (and models that cannot be captured whole), a copy of ``model`` itself whose submodules are
    compiled regions: the same class, calls, outputs and ``generate``.
    ``fxquant.record_of(qmodel)`` tells how it was quantized.
    """
    config = config or QuantConfig()
    start = time.perf_counter()
    observed = prepare(model, example_inputs, config, progress=progress, dump_dir=dump_dir)
    needed_by = config.calibration_needed_by  # static mode, SmoothQuant, GPTQ, AWQ
    if needed_by is not None:
        if calibration is None:
            raise CalibrationError(
                f"{needed_by} needs calibration data: pass calibration=[batch, ...] (or a "
                "DataLoader) to fxquant.quantize"
                + (", or use mode='dynamic', which needs none." if config.mode == "static"
                   else ".")
            )
        calibrate(observed, calibration, progress=progress)
    qmodel = convert(observed, progress=progress)
    record = record_of(qmodel)
    if record is not None:
        record.timings["total"] = time.perf_counter() - start
    return qmodel
