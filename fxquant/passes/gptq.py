"""GPTQ: choose each quantized linear's weight codes with Hessian error compensation.

Requires: a calibrated graph with ``InputStatistics`` holding Hessians (``insert_statistics``
with ``weight_method="gptq"``, then ``calibrate``); otherwise the pass does nothing. Runs after
``smooth_quant`` / ``awq``, so it quantizes the weights as they will be stored.
Guarantees: every quantized linear whose weight is its own gets codes, scales and zero-points from
``fxquant/algorithms/gptq.py`` (damping ``gptq_damp``, ``gptq_block_size``, ``gptq_act_order``;
group parameters "static", from the original weight in natural order, each group's range chosen
for the least rounding error when ``gptq_clip_search``) on its
``WeightObserver.precomputed``, which ``lower_to_int8`` stores as they are -- same buffers, same
layout, same ops as round-to-nearest. Per-channel (int8, pair-safe in the int8-GEMM modes) and
group-wise (2..8-bit) weights alike. Each records ``meta["fxquant"]["gptq"]`` (the damping used);
a weight read by several layers stays round-to-nearest, with a reason in ``ctx.refusals["gptq"]``.
The graph itself is not changed.
Why: round-to-nearest treats every weight alone; GPTQ spends each column's rounding error on the
columns still to come, where the calibration inputs say it does least harm -- the difference that
makes 4-bit weights usable.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx

from ..algorithms.gptq import gptq_quantize
from ..graph import fetch_attr, kind_of, meta
from .infra import Pass, PassContext, PassResult
from .input_scaling import weight_observer, weight_target
from .nodes import record

PASS = "gptq"


def _hessian_of(gm: fx.GraphModule, linear: fx.Node) -> torch.Tensor:
    stats = fetch_attr(gm, meta(linear)["in_stats"])
    stats.require_data("weight_method='gptq'")
    return stats.hessian


def run_gptq(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Run the pass; see the module docstring for what it requires and guarantees."""
    cfg = ctx.config
    if cfg.weight_method != "gptq" or getattr(ctx, "replay", False):
        # (A replayed model loads its saved codes: nothing to choose.)
        return PassResult(gm, False)
    for node in gm.graph.nodes:
        if kind_of(node) != "linear" or "in_stats" not in meta(node):
            continue
        if meta(node).get("weight_shared"):
            ctx.refuse(PASS, node, f"{meta(node)['weight_shared']}; round-to-nearest instead")
            continue
        observer = weight_observer(gm, node)
        scheme = dataclasses.replace(observer.scheme(), clip_search=cfg.gptq_clip_search)
        result = gptq_quantize(
            fetch_attr(gm, weight_target(node)), _hessian_of(gm, node), scheme,
            damp=cfg.gptq_damp, block_size=cfg.gptq_block_size, act_order=cfg.gptq_act_order,
        )
        observer.precomputed = result.weight
        meta(node)["gptq"] = {"damp": result.damp}
    # Codes are chosen here but stored by lower_to_int8: the graph is unchanged.
    return PassResult(gm, False)


def verify_gptq(gm: fx.GraphModule) -> str | None:
    """Check that every linear GPTQ recorded holds its codes on its weight observer
    (``precomputed``); the first violation, or None."""
    for node in gm.graph.nodes:
        if "gptq" in record(node) and weight_observer(gm, node).precomputed is None:
            return f"{node.name}: GPTQ ran but its weight observer holds no codes"
    return None


GPTQ = Pass(PASS, run_gptq, verify=verify_gptq)
