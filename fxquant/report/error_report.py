"""The per-layer error report: each quantized layer's output error, fp32 against fake quantization,
the real int8 kernels and ONNX Runtime, each layer measured in isolation.

    report = fxquant.error_report(model, qmodel, batches, onnx_path="model.onnx")
    print(report.table())             # sorted by contribution
    report.to_json("errors.json"); report.plot("errors.svg")

In isolation: forward hooks on the float model record, for every batch, each layer's input and
output; each quantized layer of ``qmodel`` (found by its record name) then runs on the *fp32*
input, so an error upstream never shows up as this layer's. Per layer:

* ``relative``: ``||y - y_fp32|| / ||y_fp32||`` over all batches;
* ``max_steps`` / ``rms_steps``: the largest / RMS error in *quantization steps of the output*,
  one step being the fp32 output's range over 255 (what one 8-bit code of that tensor is worth);
* ``int8_vs_fake_steps``: how far the int8 kernels are from the simulation they implement (float
  summation order and, at rounding boundaries, one activation code: well under one step);
* ``model_error``: the relative error of the *model's* output when this layer alone runs int8
  (a forward hook swaps its output for the int8 layer's on the same input, every other layer stays
  fp32): how much the layer costs where it counts, which the layer's own error does not tell (a
  small error in the last layer reaches the logits undamped; a larger one early may wash out);
* ``share``: the layer's part of the summed squared ``model_error``: the order of the table, and
  the sensitivity ``quantize_to_target`` ranks layers by.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate
from torch import nn
from torch.utils import _pytree as pytree

from ..errors import ExampleInputError
from ..inputs import as_model_inputs
from .layers import QuantLayer, quantized_layers
from .onnx_layers import OnnxLayer, onnx_layers

VARIANTS = ("fake_quant", "int8", "onnx")


@dataclass
class Errors:
    """One variant's error against fp32 (see the module docstring)."""

    relative: float
    max_steps: float
    rms_steps: float


@dataclass
class LayerError:
    """One quantized layer's errors in the report, per variant."""
    name: str
    kind: str
    scheme: str
    calls: int
    output_range: float
    step: float
    fake_quant: Errors
    int8: Errors
    onnx: Errors | None
    int8_vs_fake_steps: float
    model_error: float | None = None
    share: float = 0.0
    note: str = ""


@dataclass
class ErrorReport:
    """Per-layer errors, largest contribution first; ``model_output`` is the whole model's
    relative output error (int8 against fp32) on the same batches."""

    layers: list[LayerError]
    batches: int
    model_output: float | None = None
    onnx_path: str | None = None
    missing: dict[str, str] = field(default_factory=dict)  # layers not measured, and why

    def sensitivities(self) -> dict[str, float]:
        """How much quantizing each layer alone costs: the model's relative output error with only
        that layer int8 (its own relative error where the model output could not be compared)."""
        return {x.name: x.int8.relative if x.model_error is None else x.model_error
                for x in self.layers}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def table(self) -> str:
        def rel(e: Errors | None) -> str:
            return "-" if e is None else f"{100 * e.relative:.3g}%"

        rows = [(x.name, x.kind, x.scheme, rel(x.fake_quant), rel(x.int8), rel(x.onnx),
                 f"{x.int8.max_steps:.3g}", f"{x.int8.rms_steps:.3g}",
                 f"{x.int8_vs_fake_steps:.3g}",
                 "-" if x.model_error is None else f"{100 * x.model_error:.3g}%",
                 f"{100 * x.share:.1f}%") for x in self.layers]
        headers = ("layer", "kind", "scheme", "fake-quant", "int8", "ONNX RT", "int8 max",
                   "int8 rms", "int8-fake", "model alone", "share")
        head = (f"per-layer output error vs fp32 ({self.batches} batches, each layer on its fp32 "
                "input; max / rms / int8-fake in steps of the output's range / 255)")
        parts = [head, tabulate(rows, headers=headers)]
        if self.model_output is not None:
            parts.append(f"whole model: relative output error {100 * self.model_output:.3g}%")
        parts += [f"not measured: {name}: {why}" for name, why in self.missing.items()]
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.table()

    def plot(self, path: str | Path) -> Path:
        """A bar chart of each layer's relative error (fake quant, int8, ONNX Runtime)."""
        from .plot import error_bars

        return error_bars(self, Path(path))


class _Stats:
    """Running sums for one layer and variant."""

    def __init__(self) -> None:
        self.sq_err = 0.0
        self.sq_ref = 0.0
        self.max_err = 0.0
        self.count = 0

    def add(self, y: torch.Tensor, ref: torch.Tensor) -> None:
        err = (y.double() - ref.double())
        self.sq_err += float(err.pow(2).sum())
        self.sq_ref += float(ref.double().pow(2).sum())
        self.max_err = max(self.max_err, float(err.abs().max()) if err.numel() else 0.0)
        self.count += err.numel()

    def errors(self, step: float) -> Errors:
        rms = math.sqrt(self.sq_err / max(self.count, 1))
        return Errors(math.sqrt(self.sq_err / max(self.sq_ref, 1e-30)), self.max_err / step,
                      rms / step)


class _Layer:
    """What is accumulated for one quantized layer."""

    def __init__(self, layer: QuantLayer, onnx_layer: OnnxLayer | None) -> None:
        self.layer, self.onnx_layer = layer, onnx_layer
        self.stats = {v: _Stats() for v in VARIANTS}
        self.vs_fake = 0.0
        self.lo, self.hi = math.inf, -math.inf
        self.calls = 0
        self.alone = _Stats()  # the model's output with this layer alone int8

    def measure(self, x: torch.Tensor, ref: torch.Tensor) -> None:
        fake = self.layer.run(x, reference=True).reshape(ref.shape)
        int8 = self.layer.run(x).reshape(ref.shape)
        self.stats["fake_quant"].add(fake, ref)
        self.stats["int8"].add(int8, ref)
        if self.onnx_layer is not None:
            self.stats["onnx"].add(self.onnx_layer.run(x, ref), ref)
        self.vs_fake = max(self.vs_fake, float((int8 - fake).abs().max()))
        self.lo, self.hi = min(self.lo, float(ref.min())), max(self.hi, float(ref.max()))
        self.calls += 1

    def result(self, note: str) -> LayerError:
        span = self.hi - self.lo
        step = span / 255 if span > 0 else 1.0
        onnx = self.stats["onnx"].errors(step) if self.onnx_layer is not None else None
        alone = self.alone.errors(1.0).relative if self.alone.count else None
        return LayerError(self.layer.name, self.layer.kind, self.layer.scheme, self.calls, span,
                          step, self.stats["fake_quant"].errors(step),
                          self.stats["int8"].errors(step), onnx, self.vs_fake / step,
                          model_error=alone, note=note)


def first_float_output(output: Any) -> torch.Tensor | None:
    """The first floating-point tensor of a model's output (logits, last hidden state)."""
    for leaf in pytree.tree_leaves(output):
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
            return leaf
    for value in getattr(output, "values", lambda: [])():  # ModelOutput not registered in pytree
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value
    return None


def _hooks(model: nn.Module, names: Iterable[str], seen: dict[str, list]) -> tuple[list, dict]:
    modules = dict(model.named_modules())
    handles, missing = [], {}
    for name in names:
        module = modules.get(name)
        if module is None:
            missing[name] = "no module of the float model has this name (a functional call)"
            continue

        def hook(_m: nn.Module, args: tuple, out: Any, name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                seen.setdefault(name, []).append((args[0].detach(), out.detach()))

        handles.append(module.register_forward_hook(hook))
    return handles, missing


def error_report(
    float_model: nn.Module,
    qmodel: nn.Module,
    batches: Iterable[Any],
    *,
    onnx_path: str | Path | None = None,
) -> ErrorReport:
    """Measure every quantized layer of ``qmodel`` against ``float_model`` on ``batches``.

    Args:
        float_model: the model ``qmodel`` was quantized from (run in eval mode; its mode is
            given back, nothing else is touched).
        qmodel: what ``fxquant.quantize`` / ``fxquant.convert`` returned.
        batches: model inputs in any of fxquant's forms (tuple, dict, tensor), e.g. the
            calibration set. A ``(inputs, labels)`` tuple from a DataLoader is not cut: pass the
            inputs alone.
        onnx_path: a file ``fxquant.export_onnx`` wrote from ``qmodel``: each layer then also
            runs, cut out of that file, in ONNX Runtime.
    """
    layers = quantized_layers(qmodel)
    found = onnx_layers(onnx_path, layers) if onnx_path is not None else {}
    missing = {name: f"ONNX: {why}" for name, why in found.items() if isinstance(why, str)}
    runnable = {name: cut for name, cut in found.items() if isinstance(cut, OnnxLayer)}
    state = {layer.name: _Layer(layer, runnable.get(layer.name)) for layer in layers}
    seen: dict[str, list] = {}
    handles, unhooked = _hooks(float_model, state, seen)
    missing.update(unhooked)
    modes = {m: m.training for m in float_model.modules()}
    float_model.eval()
    try:
        count, model_err = _run(float_model, qmodel, batches, state, seen)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    results = [s.result(missing.get(name, "")) for name, s in state.items() if s.calls]
    for name, s in state.items():
        if not s.calls and name not in missing:
            missing[name] = "the float model never called this layer on these batches"
    sensitivity = {r.name: r.int8.relative if r.model_error is None else r.model_error
                   for r in results}
    total = sum(v ** 2 for v in sensitivity.values()) or 1.0
    for r in results:
        r.share = sensitivity[r.name] ** 2 / total
    results.sort(key=lambda r: r.share, reverse=True)
    model_rel = model_err.errors(1.0).relative if model_err.count else None
    return ErrorReport(results, count, model_rel, str(onnx_path) if onnx_path else None, missing)


def _one_at_a_time(float_model: nn.Module, inputs: Any, ref: torch.Tensor,
                   state: dict[str, _Layer], names: list[str]) -> None:
    """For each layer: the float model's output with that layer's output replaced by the int8
    layer's on the same input."""
    modules = dict(float_model.named_modules())
    for name in names:
        layer = state[name].layer

        def swap(_m: nn.Module, args: tuple, out: Any, layer: QuantLayer = layer) -> Any:
            return layer.run(args[0]).reshape(out.shape).to(out.dtype)

        handle = modules[name].register_forward_hook(swap)
        try:
            out = first_float_output(inputs.call(float_model))
        finally:
            handle.remove()
        if out is not None and out.shape == ref.shape:
            state[name].alone.add(out, ref)


def _run(float_model: nn.Module, qmodel: nn.Module, batches: Iterable[Any],
         state: dict[str, _Layer], seen: dict[str, list]) -> tuple[int, _Stats]:
    """Each batch through the float model (hooks fill ``seen``), every layer measured on what it
    saw, and the whole quantized model against the float one."""
    model_err, count = _Stats(), 0
    with torch.no_grad():
        for batch in batches:
            inputs = as_model_inputs(batch)
            seen.clear()
            ref = first_float_output(inputs.call(float_model))
            for name, calls in seen.items():
                for x, y in calls:
                    state[name].measure(x, y)
            out = first_float_output(inputs.call(qmodel))
            if ref is not None and out is not None and out.shape == ref.shape:
                model_err.add(out, ref)
                _one_at_a_time(float_model, inputs, ref, state, list(seen))
            count += 1
    if count == 0:
        raise ExampleInputError("error_report got no batches: pass at least one model input.")
    return count, model_err
