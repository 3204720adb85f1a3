"""SmoothQuant: migrate activation outliers into the weights before int8 quantization.

Requires: a calibrated graph with ``InputStatistics`` on the quantized linears' inputs
(``insert_statistics``, then ``calibrate``); ``QuantConfig.smoothquant_alpha`` set (otherwise the
pass does nothing).
Guarantees: for each input read only by quantized linears, with ``s_j = max|X_j|^alpha /
max|W_:,j|^(1-alpha)`` (``fxquant/algorithms/smoothing.py``; linears sharing the input share
``s``): the linears' weights are ``W diag(s)`` and their input is ``x / s`` -- folded into the
preceding LayerNorm / RMSNorm when nothing else reads its output, else an explicit ``mul`` by
``fxq.<source>_smooth`` (``passes/input_scaling.py``). The float function is unchanged (tested to
1e-5 relative). Each smoothed linear records ``meta["fxquant"]["smoothquant"]`` (alpha, where the
division went); an input left as it is gets a reason in ``ctx.refusals["smooth_quant"]``.
Static activation ranges are updated to the smoothed input's exact range.
Why: per-tensor int8 activations lose the small channels next to a few large outlier channels
(LayerNorm outputs of transformers); moving part of the range into per-channel-quantized weights
keeps both within reach of 8 bits.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ..algorithms.smoothing import smoothquant_scales
from ..graph import fetch_attr, meta
from .infra import Pass, PassContext, PassResult
from .input_scaling import (
    apply_input_scale,
    refusal_reason,
    scaled_linears,
    statistics_nodes,
    weight_target,
)

PASS = "smooth_quant"


def run_smooth_quant(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    alpha = ctx.config.smoothquant_alpha
    if alpha is None:
        return PassResult(gm, False)
    modified = False
    for stats_node, stats in statistics_nodes(gm):
        linears = scaled_linears(gm, stats_node)
        reason = refusal_reason(gm, stats_node, linears)
        if reason is not None:
            ctx.refuse(PASS, stats_node, reason)
            continue
        weights = [fetch_attr(gm, weight_target(lin)) for lin in linears]
        if getattr(ctx, "replay", False):  # structure only: the saved tensors are loaded over it
            s = torch.ones(weights[0].shape[1], device=weights[0].device)
        else:
            stats.require_data(f"SmoothQuant (smoothquant_alpha={alpha}), in dynamic mode too,")
            s = smoothquant_scales(stats.abs_max, weights, alpha)
        where = apply_input_scale(gm, stats_node, linears, s)
        for lin in linears:
            meta(lin)["smoothquant"] = {"alpha": alpha, "input": where}
        modified = True
    return PassResult(gm, modified)


# The float function is unchanged: tested numerically (tests/passes/test_smooth_quant.py), too
# costly to check between passes.
SMOOTH_QUANT = Pass(PASS, run_smooth_quant)
