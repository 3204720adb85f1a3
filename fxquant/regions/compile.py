"""Region-wise quantization: the shell keeps the model's interface, regions go through the passes.

    prepare_regions     shell copy -> example run -> plan regions -> PREPARE passes per region
    calibrate_regions   calibration batches through the shell (its real forward, keyword args)
    convert_regions     CONVERT passes per region -> tied tables made one -> float leftovers
                        cloned away from the user's model

The shell is an instance of the user's own class (a ``GPT2LMHeadModel`` stays one, with its
``generate``, ``config`` and KV cache); each region is replaced in it by its GraphModule.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .. import passes
from ..config import QuantConfig
from ..errors import CalibrationError, ExampleInputError
from ..graph import kind_of, meta
from ..inputs import ModelInputs, calibration_batches, check_signature
from ..progress import progress_bar
from ..record import LayerRecord, QuantRecord, RegionRecord, attach, record_of
from .heap import return_freed_memory
from .layer_region import as_layer_region
from .plan import plan_regions
from .shell import (
    clear_hooks,
    own_matrices,
    record_calls,
    set_submodule,
    share_copy,
    storages,
    unshare,
)

log = logging.getLogger("fxquant")


def _region_config(config: QuantConfig, name: str) -> QuantConfig:
    """``config`` with ``skip`` and ``layer_bits`` names made relative to the region ``name``
    (a ``layer_bits`` entry naming the region or a module above it covers all of it: "")."""
    prefix = name + "."
    inner = tuple(s[len(prefix):] for s in config.skip if s.startswith(prefix))
    bits = tuple((n[len(prefix):] if n.startswith(prefix) else "", b)
                 for n, b in config.layer_bits
                 if n.startswith(prefix) or not n or name == n or name.startswith(n + "."))
    return config.replace(skip=inner, layer_bits=bits)


def _weight_kinds(regions: list[tuple[str, fx.GraphModule]]) -> dict[int, set[str]]:
    """For every quantized weight parameter (by identity), the kinds of op that read it, across
    all regions: a table gathered in one region and multiplied in another (GPT-2's ``wte`` and
    ``lm_head``) must get the scheme that suits both, so it stays one int8 table."""
    kinds: dict[int, set[str]] = {}
    for _, gm in regions:
        for node in gm.graph.nodes:
            kind = kind_of(node)
            if not kind or not meta(node).get("quantize") or len(node.args) < 2:
                continue
            weight = node.args[1]
            if isinstance(weight, fx.Node) and weight.op == "get_attr" and _is_param(gm, weight):
                kinds.setdefault(id(gm.get_parameter(str(weight.target))), set()).add(kind)
    return kinds


def _call_model(shell: nn.Module, inputs: ModelInputs) -> Any:
    try:
        return record_calls(shell, inputs)
    except Exception as exc:
        raise ExampleInputError(
            f"{type(shell).__name__} failed on the example inputs {inputs.describe()}: "
            f"{type(exc).__name__}: {exc}. Pass inputs the model accepts (a tuple for positional "
            "arguments, a dict or tokenizer output for keyword arguments)."
        ) from None


def prepare_regions(
    model: nn.Module, inputs: ModelInputs, config: QuantConfig, *, progress: bool | None = None,
    dump_dir: Any = None,
) -> nn.Module:
    """The observed shell: a copy of ``model`` whose regions carry observers."""
    start = time.perf_counter()
    check_signature(model, inputs)
    shell = share_copy(model).eval()
    clear_hooks(shell)
    _, calls = _call_model(shell, inputs)
    plans, floats = plan_regions(shell, calls, config)
    record = QuantRecord(config=config, source_class=type(model).__name__,
                         float_modules=floats)
    record.timings["capture"] = time.perf_counter() - start
    start = time.perf_counter()
    prepared: list[tuple[str, fx.GraphModule]] = []
    for plan in progress_bar(plans, "fxquant: capture regions", progress):
        prepared.append((plan.name, canonicalize_region(plan.name, plan.graph_module, config,
                                                        dump_dir=dump_dir)))
        record.regions.append(RegionRecord(plan.name, type(shell.get_submodule(plan.name)).__name__,
                                           plan.capture))
    observe_regions(shell, prepared, config, dump_dir=dump_dir)
    record.timings["prepare"] = time.perf_counter() - start
    record.example = inputs
    attach(shell, record)
    return shell


def canonicalize_region(
    name: str, gm: fx.GraphModule, config: QuantConfig, *, dump_dir: Any = None,
    replay: bool = False,
) -> fx.GraphModule:
    """The first half of PREPARE on one captured region (canonical forms, annotations)."""
    ctx = passes.PassContext(config=_region_config(config, name), dump_dir=dump_dir, replay=replay)
    return passes.run_passes(gm, passes.PREPARE_CANONICAL, ctx)


def observe_regions(
    shell: nn.Module, prepared: list[tuple[str, fx.GraphModule]], config: QuantConfig, *,
    dump_dir: Any = None, replay: bool = False,
) -> None:
    """The second half of PREPARE on every region (observers, tied weights seen across regions);
    each observed region replaces its module in ``shell``. ``replay``: structural replay on meta
    weights (``fxquant.load``)."""
    kinds = _weight_kinds(prepared)
    for name, gm in prepared:
        ctx = passes.PassContext(config=_region_config(config, name), dump_dir=dump_dir,
                                 replay=replay)
        ctx.weight_kinds = {n.target: kinds.get(id(gm.get_parameter(n.target)), set())
                            for n in gm.graph.nodes if n.op == "get_attr" and _is_param(gm, n)}
        gm = passes.run_passes(gm, passes.PREPARE_OBSERVE, ctx)
        gm.meta.setdefault("fxquant", {}).update(region=name, stage="prepared")
        layer = shell.get_submodule(name)
        if own_matrices(layer) == ["weight"] and not any(True for _ in layer.children()):
            weight = layer.weight
            assert isinstance(weight, torch.Tensor)
            gm.meta["fxquant"]["layer_weight_shape"] = tuple(weight.shape)
        set_submodule(shell, name, gm)


def _is_param(gm: fx.GraphModule, node: fx.Node) -> bool:
    try:
        gm.get_parameter(str(node.target))
    except AttributeError:
        return False
    return True


def region_modules(shell: nn.Module) -> list[tuple[str, fx.GraphModule]]:
    """``(name, GraphModule)`` for every region of a compiled ``shell``, in its record's order."""
    record = record_of(shell)
    assert record is not None
    out = []
    for region in record.regions:
        gm = shell.get_submodule(region.name)
        assert isinstance(gm, fx.GraphModule), f"region {region.name} is not compiled"
        out.append((region.name, gm))
    return out


def calibrate_regions(shell: nn.Module, batches: Iterable[Any], *, progress: bool | None) -> int:
    """Run calibration batches through the observed shell; returns how many ran."""
    record = record_of(shell)
    assert record is not None and record.example is not None
    start = time.perf_counter()
    count = 0
    with torch.no_grad():
        for inputs in progress_bar(calibration_batches(batches, record.example),
                                   "fxquant: calibrate", progress):
            inputs.call(shell)
            count += 1
    record.calibration_batches += count
    record.stage = "calibrated"
    record.timings["calibrate"] = record.timings.get("calibrate", 0.0) + (
        time.perf_counter() - start)
    return count


def _layer_records(prefix: str, gm: fx.GraphModule, config: QuantConfig) -> list[LayerRecord]:
    layers = []
    for node in gm.graph.nodes:
        info = node.meta.get("fxquant", {})
        if "kind" not in info:
            continue
        source = info.get("source", "")
        name = prefix if source in ("weight", "weight_t", "") else f"{prefix}.{source}".strip(".")
        if info.get("quantize"):
            bits = info.get("bits") or (
                config.embedding_bits if info["kind"] == "embedding" else config.weight_bits)
            scheme = f"w{bits} {config.weight_granularity}, {info.get('mode', config.mode)}"
            op = getattr(node.target, "__name__", str(node.target))
            layers.append(LayerRecord(name, info["kind"], True, scheme=scheme, op=op,
                                      kernel=info.get("kernel", "")))
        else:
            layers.append(LayerRecord(name, info["kind"], False, reason=info.get("reason", "")))
    return layers


def _tie_tables(shell: nn.Module) -> list[tuple[str, ...]]:
    """Make int8 tables with equal contents one tensor (tied weights quantized in two regions).

    Returns the groups of buffer names that now share one tensor."""
    groups: dict[tuple, list[tuple[nn.Module, str, str]]] = {}
    for mod_name, module in shell.named_modules():
        for buf_name, buf in module._buffers.items():
            if buf is not None and buf.dtype == torch.int8 and buf.dim() == 2:
                key = (tuple(buf.shape), int(buf[:4].sum()), int(buf[-4:].sum()))
                groups.setdefault(key, []).append((module, buf_name, f"{mod_name}.{buf_name}"))
    tied = []
    for members in groups.values():
        first_module, first_name, first_path = members[0]
        first = first_module._buffers[first_name]
        assert first is not None
        same = [m for m in members[1:] if _equal(m[0]._buffers[m[1]], first)]
        for module, buf_name, _ in same:
            module._buffers[buf_name] = first
        if same:
            tied.append((first_path, *(m[2] for m in same)))
    return tied


def stamp_converted(gm: fx.GraphModule) -> None:
    """Record the SHA-256 of the CONVERT output's code in ``gm.meta["fxquant"]``: a structural
    replay (``fxquant.load``) must rebuild exactly this graph before the runtime passes run."""
    digest = hashlib.sha256(gm.code.encode()).hexdigest()
    gm.meta.setdefault("fxquant", {})["converted_sha256"] = digest


def convert_region(
    shell: nn.Module, name: str, gm: fx.GraphModule, record: QuantRecord, *, replay: bool = False
) -> None:
    """CONVERT one observed region; the int8 region replaces it in ``shell`` and its layers are
    added to ``record``."""
    ctx = passes.PassContext(config=_region_config(record.config, name), replay=replay)
    shape = gm.meta["fxquant"].get("layer_weight_shape")
    gm = passes.run_passes(gm, passes.CONVERT, ctx)
    if shape is not None:
        gm = as_layer_region(gm, torch.Size(shape))
    stamp_converted(gm)
    # What the ONNX export and older readers look up on a converted GraphModule.
    gm.meta["fxquant"].update(stage="converted", config=record.config, capture="regions",
                              source_class=record.source_class, region=name)
    set_submodule(shell, name, gm)
    record.layers += _layer_records(name, gm, record.config)


def _equal(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    return a is not None and torch.equal(a, b)


def pack_regions(shell: nn.Module, record: QuantRecord) -> None:
    """The runtime form of every region (weights packed once, see ``passes.pack_weights``); the
    record's layers then say which kernel each runs."""
    seen: set[int] = set()
    tied: set[int] = set()
    for m in shell.modules():
        for t in m._buffers.values():
            if t is not None:
                (tied if id(t) in seen else seen).add(id(t))
    record.layers = []
    # A causal LM decodes one token per call: pack for one-row calls (passes.PassContext.decode).
    can_generate = getattr(shell, "can_generate", None)
    decode = bool(callable(can_generate) and can_generate())
    for name, gm in region_modules(shell):
        ctx = passes.PassContext(config=_region_config(record.config, name), shared_tensors=tied,
                                 decode=decode)
        gm = passes.run_passes(gm, passes.RUNTIME, ctx)
        set_submodule(shell, name, gm)
        record.layers += _layer_records(name, gm, record.config)
        return_freed_memory()  # the codes this region packed from


def convert_regions(observed: nn.Module, *, progress: bool | None = None) -> nn.Module:
    """The int8 model: every region of ``observed`` lowered and fused; ``observed`` unchanged."""
    source = record_of(observed)
    assert source is not None
    if source.config.mode == "static" and not source.calibration_batches:
        raise CalibrationError(
            "static mode needs calibration data: pass calibration=[batch, ...] (or a DataLoader) "
            "to fxquant.quantize, or use mode='dynamic', which needs none."
        )
    start = time.perf_counter()
    user_storages = storages(observed)
    shell = share_copy(observed)
    record = dataclasses.replace(source, regions=list(source.regions), layers=[],
                                 timings=dict(source.timings), example=None)
    for name, gm in progress_bar(region_modules(shell), "fxquant: convert regions", progress):
        convert_region(shell, name, gm, record)
    record.tied = _tie_tables(shell)
    unshare(shell, user_storages)
    pack_regions(shell, record)
    record.stage = "converted"
    record.timings["convert"] = time.perf_counter() - start
    attach(shell, record)
    return shell


def whole_model_record(gm: fx.GraphModule) -> QuantRecord:
    """The record of a model captured whole (one region: the model)."""
    info = gm.meta["fxquant"]
    config: QuantConfig = info["config"]
    source_class = info.get("source_class", type(gm).__name__)
    return QuantRecord(
        config=config, source_class=source_class, stage=info.get("stage", "converted"),
        capture=info["capture"], regions=[RegionRecord("", source_class, info["capture"])],
        layers=_layer_records("", gm, config), timings=dict(info.get("timings", {})),
        calibration_batches=info.get("calibration_batches", 0),
    )
