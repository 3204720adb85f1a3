"""AWQ: activation-aware scaling of input channels before round-to-nearest weight quantization.

Requires: a calibrated graph with ``InputStatistics`` holding input rows (``insert_statistics``
with ``weight_method="awq"``, then ``calibrate``); otherwise the pass does nothing.
Guarantees: for each input read only by quantized linears, the scale ``s`` chosen by
``fxquant/algorithms/awq.py`` (grid search over alpha in ``s = mean|X|^alpha``, minimising the
quantized linears' output error on the stored rows) is applied as SmoothQuant's is: weights
``W diag(s)``, input ``x / s`` folded into the previous normalisation or an explicit ``mul``
(``passes/input_scaling.py``). The float function is unchanged; the weights are then quantized by
``lower_to_int8`` as usual. Each scaled linear records ``meta["fxquant"]["awq"]`` (alpha, output
error against round-to-nearest's on the calibration rows, where the division went). The graph
takes the same form whatever the data (a search that picks alpha = 0 applies ``s = 1``), so a
saved model's structure can be replayed without calibration (``ctx.replay``: ``s = 1``, the saved
tensors are loaded over it).
Why: 4-bit weights lose most where they meet large activations; scaling those columns up before
quantization gives them a finer grid, at no cost in the float function.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ..algorithms.awq import awq_search
from ..graph import fetch_attr, meta
from .infra import Pass, PassContext, PassResult
from .input_scaling import (
    apply_input_scale,
    refusal_reason,
    scaled_linears,
    statistics_nodes,
    weight_observer,
    weight_target,
)

PASS = "awq"


def run_awq(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    if ctx.config.weight_method != "awq":
        return PassResult(gm, False)
    modified = False
    for stats_node, stats in statistics_nodes(gm):
        linears = scaled_linears(gm, stats_node)
        reason = refusal_reason(gm, stats_node, linears)
        if reason is not None:
            ctx.refuse(PASS, stats_node, reason)
            continue
        weights = [fetch_attr(gm, weight_target(lin)) for lin in linears]
        record: dict[str, object]
        if getattr(ctx, "replay", False):
            scale, record = torch.ones(weights[0].shape[1], device=weights[0].device), {}
        else:
            stats.require_data("weight_method='awq'")
            schemes = [weight_observer(gm, lin).scheme() for lin in linears]
            found = awq_search(stats.samples(), weights, schemes, ctx.config.awq_grid)
            scale = found.scale
            record = {"alpha": found.alpha, "error": found.error, "rtn_error": found.rtn_error}
        record["input"] = apply_input_scale(gm, stats_node, linears, scale)
        for lin in linears:
            meta(lin)["awq"] = record
        modified = True
    return PassResult(gm, modified)


# As for SmoothQuant, the unchanged float function is a numerical test, not a contract check.
AWQ = Pass(PASS, run_awq)
