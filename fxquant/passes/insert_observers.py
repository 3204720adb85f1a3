"""Insert observers: weight observers on every annotated weight, activation observers on the
inputs of annotated matmuls in static mode.

Requires: annotated nodes (``meta["fxquant"]["quantize"]``).
Guarantees: each quantized weight ``get_attr`` feeds its consumers through exactly one
``call_module`` to an ``fxq.<source>_w_obs`` WeightObserver (tied weights share one observer, so
they stay one int8 tensor); in static mode each distinct input of a quantized linear/conv passes
through one ``fxq.<source>_act_obs`` activation observer. Weights are checked for NaN/Inf here,
before any data runs, so the error names the layer.
Why: observers are where ranges are measured; the lowering pass turns each into quantize /
dequantize ops, so observers are the only place that knows what gets quantized.
"""

from __future__ import annotations

import torch.fx as fx

from ..algorithms.statistics import InputStatistics
from ..config import QuantConfig
from ..graph import add_module, fetch_attr, kind_of, meta
from ..observers import Observer, WeightObserver, make_activation_observer
from .infra import Pass, PassContext, PassResult
from .nodes import node_arg, record, target_of


def _quantized_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if "fxquant" in n.meta and meta(n).get("quantize")]


def _observe(
    gm: fx.GraphModule, value: fx.Node, target: str, users: list[fx.Node], before: fx.Node
) -> fx.Node:
    with gm.graph.inserting_before(before):
        obs = gm.graph.call_module(target, (value,))
    for user in users:
        user.replace_input_with(value, obs)
    return obs


def _weight_observer(
    gm: fx.GraphModule, node: fx.Node, cfg: QuantConfig, observed: dict[str, fx.Node],
    nodes: list[fx.Node], elsewhere: dict[str, set[str]], replay: bool = False,
) -> fx.Node:
    """The observer node for ``node``'s weight, inserted on first use of that parameter."""
    weight = node_arg(node, 1)
    if weight.op == "call_module":  # a tied weight: an earlier user inserted its observer
        meta(node)["bits"] = fetch_attr(gm, target_of(weight)).bits
        return weight
    name = target_of(weight)
    if name not in observed:
        source = meta(node)["source"]
        users = [u for u in weight.users if u in nodes]
        # A table only gathered (never fed to the int8 GEMM) takes embedding_bits; a table tied
        # to a matmul (GPT-2's lm_head) takes weight_bits, since it feeds the GEMM too. Tied
        # uses may read the parameter through different get_attr nodes: look at all of them.
        readers = [n for n in nodes if getattr(n.args[1], "target", None) == weight.target]
        kinds = {kind_of(u) for u in readers} | elsewhere.get(name, set())
        only_gathered = kinds == {"embedding"}
        bits = cfg.bits_for(source, cfg.embedding_bits if only_gathered else cfg.weight_bits)
        # Weights that meet 8-bit activations in an int8 GEMM or conv get saturation-safe scales.
        feeds_gemm = bool(kinds & {"linear", "conv"})
        # Group-wise weights: linears only (annotate decides; a table or conv stays per-row).
        group = meta(node).get("group_size") if kinds == {"linear"} else None
        observer = WeightObserver(
            source, bits, cfg.weight_symmetric, cfg.weight_granularity != "per_tensor",
            pair_safe=feeds_gemm and cfg.needs_pair_safe(bits), group_size=group,
        )
        if not replay:  # structural replay (fxquant.load): meta weights hold no values
            observer.check_finite(fetch_attr(gm, name))
        target = add_module(gm, source, "w_obs", observer)
        observed[name] = _observe(gm, weight, target, users, users[0])
    node.replace_input_with(weight, observed[name])
    meta(node)["bits"] = fetch_attr(gm, target_of(observed[name])).bits
    return observed[name]


def _activation_observer(
    gm: fx.GraphModule, node: fx.Node, cfg: QuantConfig, observed: dict[fx.Node, fx.Node]
) -> fx.Node:
    x = node_arg(node, 0)
    if x not in observed:
        source = meta(node)["source"]
        observer = make_activation_observer(cfg, f"input of {source}")
        observed[x] = _observe(gm, x, add_module(gm, source, "act_obs", observer), [node], node)
    node.replace_input_with(x, observed[x])
    return observed[x]


def run_insert_observers(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Run the pass; see the module docstring for what it requires and guarantees."""
    cfg = ctx.config
    weights: dict[str, fx.Node] = {}
    activations: dict[fx.Node, fx.Node] = {}
    nodes = _quantized_nodes(gm)
    for node in nodes:
        info = meta(node)
        info["weight_observer"] = _weight_observer(gm, node, cfg, weights, nodes,
                                                  ctx.weight_kinds, ctx.replay).target
        if cfg.mode == "static" and info["kind"] in ("linear", "conv"):
            info["act_observer"] = _activation_observer(gm, node, cfg, activations).target
    return PassResult(gm, bool(nodes))


def _calls(gm: fx.GraphModule, node: object, types: type | tuple[type, ...]) -> bool:
    """Whether ``node`` is a call to a module of ``types``."""
    return (isinstance(node, fx.Node) and node.op == "call_module"
            and isinstance(fetch_attr(gm, target_of(node)), types))


def _unobserved(gm: fx.GraphModule, node: fx.Node) -> str | None:
    info = record(node)
    if not _calls(gm, node.args[1], WeightObserver):
        return "its weight is not read through a WeightObserver"
    static = info.get("mode") == "static" and info.get("kind") in ("linear", "conv")
    if static and (not _calls(gm, node.args[0], Observer)
                   or _calls(gm, node.args[0], InputStatistics)):
        return "its input is not read through an activation observer"
    return None


def verify_insert_observers(gm: fx.GraphModule) -> str | None:
    """Check that every quantized node reads its weight through a ``WeightObserver`` and, for a
    static linear / conv, its input through an activation observer; the first violation, or None."""
    for node in _quantized_nodes(gm):
        why = _unobserved(gm, node)
        if why is not None:
            return f"{node.name}: {why}"
    return None


INSERT_OBSERVERS = Pass("insert_observers", run_insert_observers,
                        verify=verify_insert_observers)
