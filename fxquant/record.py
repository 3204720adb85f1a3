"""The typed record of how a model was quantized, reachable from the model it describes.

    record = fxquant.record_of(qmodel)
    print(record.table())            # regions, layers (quantized / float and why), timings

One ``QuantRecord`` per quantized model: which regions were compiled and how each was captured,
which layers were quantized with which scheme and kernel, which stayed float and why, the config
and the time each stage took. It is data (``to_dict`` for JSON); nothing reads state back out of
names or dicts synced by hand.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

import torch.fx as fx
from tabulate import tabulate
from torch import nn

from .config import QuantConfig
from .errors import FxQuantError
from .inputs import ModelInputs

RECORD_ATTR = "fxquant_record"
Stage = str  # "captured" | "prepared" | "calibrated" | "converted" | the QAT stage


@dataclass
class RegionRecord:
    """A submodule compiled through the passes (``name`` "" is the whole model)."""

    name: str
    module_type: str
    capture: str  # "symbolic_trace" | "torch.export"


@dataclass
class FloatModule:
    """A module holding weight matrices that no region covers, and why."""

    name: str
    module_type: str
    reason: str


@dataclass
class LayerRecord:
    """One quantizable layer: quantized (with its scheme and op) or left float (with a reason)."""

    name: str
    kind: str  # "linear" | "conv" | "embedding"
    quantized: bool
    scheme: str = ""
    op: str = ""
    reason: str = ""
    kernel: str = ""  # what runs it, and why not the fast path where it is not


@dataclass
class QuantRecord:
    """How fxquant quantized a model: config, stage, capture, regions, layers and timings
    (attached to the model; see :func:`record_of`)."""
    config: QuantConfig
    source_class: str
    stage: Stage = "prepared"
    capture: str = "regions"  # "symbolic_trace" | "torch.export" | "regions"
    regions: list[RegionRecord] = field(default_factory=list)
    float_modules: list[FloatModule] = field(default_factory=list)
    layers: list[LayerRecord] = field(default_factory=list)
    tied: list[tuple[str, ...]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    calibration_batches: int = 0
    # Why the model could not be captured whole, when regions were the fallback.
    whole_model_failure: str = ""
    # The example the model was prepared with (to check calibration batches against); dropped
    # once the model is converted.
    example: ModelInputs | None = field(default=None, repr=False, compare=False)

    @property
    def quantized_layers(self) -> list[LayerRecord]:
        return [layer for layer in self.layers if layer.quantized]

    @property
    def float_layers(self) -> list[LayerRecord]:
        return [layer for layer in self.layers if not layer.quantized]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(dataclasses.replace(self, example=None))
        out.pop("example")
        out["config"] = self.config.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantRecord:
        """Inverse of :meth:`to_dict` (``fxquant.load`` reads the record back from JSON). Fields
        this fxquant does not know (a newer one recorded more) are ignored; the config is strict
        (``QuantConfig.from_dict``)."""
        data = _known(cls, data)
        data.pop("example", None)
        return cls(
            config=QuantConfig.from_dict(data.pop("config")),
            regions=[RegionRecord(**_known(RegionRecord, r)) for r in data.pop("regions", [])],
            float_modules=[FloatModule(**_known(FloatModule, f))
                           for f in data.pop("float_modules", [])],
            layers=[LayerRecord(**_known(LayerRecord, x)) for x in data.pop("layers", [])],
            tied=[tuple(t) for t in data.pop("tied", [])],
            **data,
        )

    def table(self) -> str:
        """Regions, layers and timings as plain-text tables."""
        head = (f"{self.source_class}: {self.stage}, mode {self.config.mode}, capture "
                f"{self.capture}, {len(self.quantized_layers)} layers quantized, "
                f"{len(self.float_layers)} float")
        parts = [head]
        if self.capture == "regions":
            regions = [(r.name or "(model)", r.module_type, r.capture) for r in self.regions]
            regions += [(f.name, f.module_type, f"float: {f.reason}") for f in self.float_modules]
            parts.append(tabulate(regions, headers=("region", "type", "capture")))
        rows = [(layer.name, layer.kind, "int8" if layer.quantized else "float",
                 layer.scheme or layer.reason, layer.kernel or layer.op) for layer in self.layers]
        parts.append(tabulate(rows, headers=("layer", "kind", "", "scheme / reason", "kernel")))
        if self.tied:
            parts.append("tied (one int8 table): " + "; ".join(" = ".join(t) for t in self.tied))
        if self.timings:
            parts.append("timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items()))
        return "\n\n".join(parts)

    def __str__(self) -> str:
        return self.table()


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def record_of(model: nn.Module) -> QuantRecord | None:
    """The record of a model fxquant prepared or converted, else None."""
    record = getattr(model, RECORD_ATTR, None)
    return record if isinstance(record, QuantRecord) else None


def stage_of(model: nn.Module) -> Stage | None:
    """How far fxquant took ``model`` ("captured", "prepared", "calibrated", "converted", or a QAT
    stage), None for a module fxquant did not touch.

    A GraphModule (a model captured whole, or one region) says it in ``meta["fxquant"]``, which the
    passes keep up to date; a model quantized region by region in its :class:`QuantRecord`."""
    if isinstance(model, fx.GraphModule):
        return model.meta.get("fxquant", {}).get("stage")
    record = record_of(model)
    return record.stage if record is not None else None


def region_graph(model: nn.Module, name: str) -> fx.GraphModule:
    """Region ``name`` of a model compiled region by region: the GraphModule fxquant put there."""
    module = model.get_submodule(name)
    if not isinstance(module, fx.GraphModule):
        raise FxQuantError(
            f"{type(model).__name__}.{name} is a {type(module).__name__}, not the GraphModule "
            "fxquant compiled there: was the model changed after quantization?"
        )
    return module


def attach(model: nn.Module, record: QuantRecord) -> None:
    """Attach ``record`` to ``model`` (read back with :func:`record_of`)."""
    # A plain attribute (not a submodule or buffer): it travels with deepcopy and stays out of
    # state_dict().
    object.__setattr__(model, RECORD_ATTR, record)
