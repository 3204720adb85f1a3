"""The quantized layers of a converted model, each runnable on its own on a given input.

A layer is found by its record name (``fxquant.record_of(qmodel).layers``): the quantized node of
a region (or of the whole-model graph) whose ``meta["fxquant"]["source"]`` names it. Running a
layer evaluates that node with its activation argument replaced by the given tensor and every
other argument read from the graph's buffers: with the fast kernels it is the int8 model's layer,
inside ``ops.reference_kernels()`` it is the fake-quant simulation of it (the reference kernels
*are* quantize-dequantize in float).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.fx as fx
from torch import nn

from .. import ops
from ..errors import FxQuantError
from ..graph import fetch_attr
from ..passes import portable
from ..record import record_of, region_graph


@dataclass
class QuantLayer:
    """One quantized layer of a converted model."""

    name: str
    kind: str  # "linear" | "conv" | "embedding"
    scheme: str
    graph_module: fx.GraphModule
    node: fx.Node

    def run(self, x: torch.Tensor, *, reference: bool = False) -> torch.Tensor:
        """The layer's output on input ``x`` (int8 kernels, or the reference simulation)."""
        with torch.no_grad():
            if reference:
                with ops.reference_kernels():
                    return _evaluate(self.graph_module, self.node, self.node.args[0], x)
            return _evaluate(self.graph_module, self.node, self.node.args[0], x)


def _evaluate(gm: fx.GraphModule, value: Any, act: fx.node.Argument, x: torch.Tensor) -> Any:
    """``value`` (a node or an argument structure) with ``act`` set to ``x``."""
    if isinstance(value, fx.Node):
        if value is act:
            return x
        if value.op == "get_attr":
            return fetch_attr(gm, str(value.target))
        if value.op == "call_function":
            args = _evaluate(gm, value.args, act, x)
            kwargs = {k: _evaluate(gm, v, act, x) for k, v in value.kwargs.items()}
            fn = cast(Callable[..., Any], value.target)  # a call_function's target is callable
            return fn(*args, **kwargs)
        raise FxQuantError(f"{value.name} ({value.op}) cannot be evaluated on its own")
    if isinstance(value, (list, tuple)):
        return type(value)(_evaluate(gm, v, act, x) for v in value)
    return value


def layer_name(prefix: str, source: str) -> str:
    """A layer's record name from its region and node source (``regions.compile``'s rule: a
    region that is one layer reads its weight as ``weight`` / ``weight_t``)."""
    if source in ("weight", "weight_t", ""):
        return prefix
    return f"{prefix}.{source}".strip(".")


def _graphs(qmodel: nn.Module) -> list[tuple[str, fx.GraphModule]]:
    if isinstance(qmodel, fx.GraphModule):
        return [("", qmodel)]
    record = record_of(qmodel)
    if record is None or record.stage != "converted":
        raise FxQuantError(
            f"{type(qmodel).__name__} is not a model fxquant converted: pass what "
            "fxquant.quantize or fxquant.convert returned."
        )
    return [(r.name, region_graph(qmodel, r.name)) for r in record.regions]


def _op_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` with fxquant's ops (the graph the runtime form was packed from, if it was)."""
    if gm.meta.get("fxquant", {}).get("packed"):
        return portable(gm)
    return gm


def quantized_layers(qmodel: nn.Module) -> list[QuantLayer]:
    """Every quantized layer of ``qmodel``, in graph order, with its record scheme."""
    record = record_of(qmodel)
    schemes = {r.name: r.scheme for r in record.layers} if record is not None else {}
    layers = []
    for prefix, region in _graphs(qmodel):
        gm = _op_graph(region)
        for node in gm.graph.nodes:
            info = node.meta.get("fxquant", {})
            if "kind" in info and info.get("quantize") and node.op == "call_function":
                name = layer_name(prefix, info.get("source", ""))
                layers.append(QuantLayer(name, info["kind"], schemes.get(name, ""), gm, node))
    return layers
