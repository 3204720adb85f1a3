"""Structural replay: the int8 model's structure rebuilt from a float skeleton on meta weights.

A saved folder does not hold graphs (no pickles, no code): it holds the config, the region names,
and tensors. ``replay`` captures the same regions by name (no example run: the names are
recorded), runs the same PREPARE and CONVERT passes with ``PassContext.replay`` set (passes skip
work that reads values), and gives static mode's activation observers the ranges that lowering
used at save time (``gm.meta["fxquant"]["activation_ranges"]``) instead of calibrating. The int8
buffers come out on meta with their shapes and dtypes; the loader assigns the saved tensors, then
``finish`` runs the runtime passes (weights packed for this machine's kernels) on them.

Each rebuilt region's code, as CONVERT leaves it, must hash to what was recorded at conversion
(``converted_sha256``): an fxquant whose passes would build another graph is refused, not run.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch.fx as fx
from torch import nn

from .. import passes
from ..algorithms.statistics import InputStatistics
from ..capture import symbolic_trace
from ..config import QuantConfig
from ..errors import CaptureError, FormatError, SaveLoadError
from ..graph import fetch_attr
from ..observers import MinMaxObserver, Observer
from ..record import QuantRecord, attach, region_graph
from ..regions.compile import (
    canonicalize_region,
    convert_region,
    observe_regions,
    pack_regions,
    stamp_converted,
)
from .format import RegionReplay

_REPLAYABLE = ("symbolic_trace",)
_SHA = "converted_sha256"
_RANGES = "activation_ranges"


class _Recorded(MinMaxObserver):
    """An activation observer that lowers to the range recorded at save time. Passes that move
    its range in replay (SmoothQuant and AWQ rescale static ranges) do not change it."""

    def __init__(self, target: str, lo: float, hi: float, batches: int) -> None:
        super().__init__(target)
        self.recorded = (lo, hi)
        self.batches = batches

    def quant_range(self) -> tuple[float, float]:
        return self.recorded


def region_graphs(model: nn.Module, record: QuantRecord) -> list[tuple[str, fx.GraphModule]]:
    """(region name, converted GraphModule) of a quantized model; "" is a model captured whole."""
    if record.capture != "regions":
        assert isinstance(model, fx.GraphModule)
        return [("", model)]
    return [(r.name, region_graph(model, r.name)) for r in record.regions]


def _where(name: str) -> str:
    return f"region {name!r}" if name else "the model"


def replay_info(model: nn.Module, record: QuantRecord) -> dict[str, RegionReplay]:
    """What :func:`replay` needs per region, read off the converted model; refuses (at save
    time) what a load could not rebuild."""
    captures = {record.capture} if record.capture != "regions" else {
        r.capture for r in record.regions}
    unsupported = captures - set(_REPLAYABLE)
    if unsupported:
        raise SaveLoadError(
            f"fxquant.save cannot keep a {record.source_class} captured with "
            f"{', '.join(sorted(unsupported))}: a load rebuilds the graphs by tracing the float "
            "model again, which needs no example only for torch.fx symbolic_trace captures. "
            "Quantize with QuantConfig(capture='regions') (or 'symbolic_trace') to save it."
        )
    info = {}
    for name, gm in region_graphs(model, record):
        seen = gm.meta.get("fxquant", {})
        if _SHA not in seen:
            raise SaveLoadError(
                f"{_where(name)} of this {record.source_class} was converted without the "
                "records a load replays from (an older fxquant?): quantize the float model again "
                "with this fxquant, then save."
            )
        ranges = [(float(lo), float(hi), int(n)) for lo, hi, n in seen.get(_RANGES, [])]
        info[name] = RegionReplay(seen[_SHA], ranges)
    return info


def _use_recorded_ranges(gm: fx.GraphModule, recorded: RegionReplay, name: str) -> None:
    # Activation observers only: input statistics (SmoothQuant / AWQ / GPTQ) are no range.
    nodes = [n for n in gm.graph.nodes
             if n.op == "call_module" and isinstance(fetch_attr(gm, n.target), Observer)
             and not isinstance(fetch_attr(gm, n.target), InputStatistics)]
    if len(nodes) != len(recorded.activation_ranges):
        raise FormatError(
            f"{_where(name)}: the replay inserted {len(nodes)} activation observers where the "
            f"save recorded {len(recorded.activation_ranges)} calibrated ranges; this fxquant "
            "builds another graph than the one that saved the model. Re-quantize the float model."
        )
    for node, (lo, hi, batches) in zip(nodes, recorded.activation_ranges, strict=True):
        parent, _, attr = str(node.target).rpartition(".")
        owner = gm.get_submodule(parent) if parent else gm
        setattr(owner, attr, _Recorded(fetch_attr(gm, node.target).target, lo, hi, batches))


def _check_same(gm: fx.GraphModule, recorded: RegionReplay, name: str, versions: str) -> None:
    if gm.meta["fxquant"][_SHA] != recorded.converted_sha256:
        raise FormatError(
            f"{_where(name)} rebuilds to another graph than the one saved ({versions}): this "
            "fxquant or torch quantizes that code differently. Load with the versions that saved "
            "it, or re-quantize the float model."
        )


def _region_module(shell: nn.Module, name: str, module_type: str) -> nn.Module:
    try:
        module = shell.get_submodule(name)
    except AttributeError:
        raise SaveLoadError(
            f"the float model has no submodule {name!r}, a region of the saved model: pass the "
            "model class and configuration the quantized model was made from."
        ) from None
    if type(module).__name__ != module_type:
        raise SaveLoadError(
            f"{name!r} is a {type(module).__name__} in the float model but was a {module_type} "
            "in the saved model: pass the model the quantized one was made from."
        )
    return module


def _trace(module: nn.Module, config: QuantConfig, name: str) -> fx.GraphModule:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return symbolic_trace(module, config)
    except CaptureError as exc:
        raise SaveLoadError(f"{_where(name)} no longer traces: {exc}") from None


def _replay_regions(shell: nn.Module, saved: QuantRecord, config: QuantConfig,
                    info: dict[str, RegionReplay], versions: str) -> QuantRecord:
    prepared = []
    for region in saved.regions:
        module = _region_module(shell, region.name, region.module_type)
        gm = _trace(module, config, region.name)
        prepared.append((region.name, canonicalize_region(region.name, gm, config, replay=True)))
    observe_regions(shell, prepared, config, replay=True)
    record = dataclasses.replace(saved, config=config, layers=[])
    for region in saved.regions:
        _use_recorded_ranges(region_graph(shell, region.name), info[region.name], region.name)
        convert_region(shell, region.name, region_graph(shell, region.name), record, replay=True)
        _check_same(region_graph(shell, region.name), info[region.name], region.name, versions)
    return record


def _replay_whole(skeleton: nn.Module, saved: QuantRecord, config: QuantConfig,
                  info: RegionReplay, versions: str) -> fx.GraphModule:
    gm = _trace(skeleton, config, "")
    ctx = passes.PassContext(config=config, replay=True)
    gm = passes.run_passes(gm, passes.PREPARE, ctx)
    _use_recorded_ranges(gm, info, "")
    gm = passes.run_passes(gm, passes.CONVERT, ctx)
    stamp_converted(gm)
    _check_same(gm, info, "", versions)
    gm.meta["fxquant"].update(stage="converted", config=config, timings=dict(saved.timings),
                              refusals=dict(ctx.refusals),
                              calibration_batches=saved.calibration_batches)
    return gm


def replay(skeleton: nn.Module, saved: QuantRecord, config: QuantConfig,
           info: dict[str, RegionReplay], versions: str) -> nn.Module:
    """The quantized model's structure on ``skeleton`` (meta parameters; changed in place for
    region models), int8 buffers on meta, checked against the recorded graphs; the saved record
    attached. ``versions`` says who saved it, for error messages."""
    names = {r.name for r in saved.regions} if saved.capture == "regions" else {""}
    if set(info) != names:
        raise FormatError("the manifest's replay table and its regions disagree; the folder is "
                          "damaged. Save the model again.")
    try:
        if saved.capture == "regions":
            record = _replay_regions(skeleton, saved, config, info, versions)
            model: nn.Module = skeleton
        else:
            model = _replay_whole(skeleton, saved, config, info[""], versions)
            record = dataclasses.replace(saved, config=config)
    except SaveLoadError:
        raise
    except Exception as exc:  # a pass failed on the skeleton: not the model that was saved
        raise SaveLoadError(
            f"the quantized {saved.source_class} could not be rebuilt on the float model given "
            f"({type(exc).__name__}: {exc}); pass the model it was made from."
        ) from exc
    record.layers = list(saved.layers)
    attach(model, record)
    return model


def finish(model: nn.Module, record: QuantRecord) -> nn.Module:
    """The runtime passes on the loaded tensors (as ``fxquant.convert`` ends): weights packed
    once for this machine's int8 kernels. Returns the model (a new one when captured whole)."""
    if record.capture == "regions":
        pack_regions(model, record)
        return model
    assert isinstance(model, fx.GraphModule)
    gm = passes.run_passes(model, passes.RUNTIME, passes.PassContext(config=record.config))
    attach(gm, record)
    return gm
