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

from ..graph import add_module, fetch_attr, meta
from ..observers import WeightObserver, make_activation_observer
from .infra import PassContext, PassResult


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


def run_insert_observers(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    cfg = ctx.config
    weight_observers: dict[str, fx.Node] = {}
    act_observers: dict[fx.Node, fx.Node] = {}
    nodes = _quantized_nodes(gm)
    for node in nodes:
        info = meta(node)
        weight = node.args[1]
        if weight.target not in weight_observers:
            observer = WeightObserver(
                info["source"], cfg.weight_bits, cfg.weight_symmetric,
                cfg.weight_granularity == "per_channel",
            )
            observer.check_finite(fetch_attr(gm, weight.target))
            target = add_module(gm, info["source"], "w_obs", observer)
            users = [u for u in weight.users if u in nodes]
            weight_observers[weight.target] = _observe(gm, weight, target, users, users[0])
        else:
            node.replace_input_with(weight, weight_observers[weight.target])
        info["weight_observer"] = weight_observers[weight.target].target
        if cfg.mode == "static" and info["kind"] in ("linear", "conv"):
            x = node.args[0]
            if x not in act_observers:
                observer = make_activation_observer(cfg, f"input of {info['source']}")
                target = add_module(gm, info["source"], "act_obs", observer)
                act_observers[x] = _observe(gm, x, target, [node], node)
            else:
                node.replace_input_with(x, act_observers[x])
            info["act_observer"] = act_observers[x].target
    return PassResult(gm, bool(nodes))
