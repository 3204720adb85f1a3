"""Annotate: decide which ops get quantized (policy only; nothing is inserted here).

Requires: a canonical graph (see ``canonicalize``).
Guarantees: every canonical quantizable node has ``meta["fxquant"]["quantize"]`` set; ``True``
nodes also carry ``kind`` and ``mode``; ``False`` nodes carry a ``reason``. With
``weight_granularity="per_group"``, quantized linears carry ``group_size`` (None where the group
size does not divide the input width: the layer stays per-channel, with the reason recorded under
``ctx.refusals["annotate"]``).
Why: keeping the decision apart from the mechanism (as torchao's pt2e annotators do) lets a user
read why a layer stayed float, and lets the observer pass stay a plain rewrite.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ..config import QuantConfig
from ..graph import fetch_attr, kind_of, meta
from .infra import Pass, PassContext, PassResult
from .nodes import node_arg, record, target_of

PASS = "annotate"


def _skipped(source: str, skip: tuple[str, ...]) -> bool:
    return any(source == s or source.startswith(s + ".") for s in skip)


def refusal_reason(gm: fx.GraphModule, node: fx.Node, config: QuantConfig) -> str | None:
    """Why ``node`` must stay float, or None when it can be quantized."""
    kind = kind_of(node)
    weight = node.args[1] if len(node.args) > 1 else None
    if not isinstance(weight, fx.Node) or weight.op != "get_attr":
        return "weight is computed in the graph, not a parameter"
    source = meta(node).get("source", weight.target)
    if _skipped(source, config.skip):
        return "listed in QuantConfig.skip"
    if kind == "embedding" and not config.quantize_embeddings:
        return "QuantConfig.quantize_embeddings is False"
    tensor = fetch_attr(gm, target_of(weight))
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.float32:
        return f"weight dtype {getattr(tensor, 'dtype', type(tensor))} is not float32"
    if tensor.numel() < config.min_weight_elements:
        return f"{tensor.numel()} weights < QuantConfig.min_weight_elements"
    if kind == "conv" and node.kwargs:
        return "conv called with keyword arguments"
    return None


def _annotate_group(gm: fx.GraphModule, node: fx.Node, ctx: PassContext) -> None:
    """Group-wise weights for linears whose input width the group size divides."""
    size = ctx.config.group_size
    if kind_of(node) != "linear":
        ctx.refuse(PASS, node, f"group-wise weights are for linears; this {kind_of(node)} "
                                  "keeps one scale per output channel")
        return
    columns = fetch_attr(gm, target_of(node_arg(node, 1))).shape[-1]
    group = size if columns % size == 0 else None
    meta(node)["group_size"] = group
    if group is None:
        ctx.refuse(PASS, node, f"group_size {size} does not divide the {columns} input "
                                  "channels; kept per-channel")


def run_annotate(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Run the pass; see the module docstring for what it requires and guarantees."""
    for node in gm.graph.nodes:
        kind = kind_of(node)
        if kind is None:
            continue
        reason = refusal_reason(gm, node, ctx.config)
        info = meta(node)
        info.update(kind=kind, quantize=reason is None, mode=ctx.config.mode)
        if reason is not None:
            info["reason"] = reason
            ctx.refuse(PASS, node, reason)
        elif ctx.config.weight_granularity == "per_group":
            _annotate_group(gm, node, ctx)
    # Annotation changes metadata only, never the graph.
    return PassResult(gm, False)


def _unannotated(node: fx.Node) -> str | None:
    info = record(node)
    if "quantize" not in info:
        return "no quantize decision"
    wanted = ("kind", "mode") if info["quantize"] else ("reason",)
    missing = [k for k in wanted if k not in info]
    return f"no {missing}" if missing else None


def verify_annotate(gm: fx.GraphModule) -> str | None:
    """Check that every canonical quantizable node has a quantize decision, with ``kind`` and
    ``mode`` when quantized and a ``reason`` when not; the first violation, or None."""
    for node in gm.graph.nodes:
        why = _unannotated(node) if kind_of(node) else None
        if why is not None:
            return f"{node.name}: {why}"
    return None


ANNOTATE = Pass(PASS, run_annotate, verify=verify_annotate)
