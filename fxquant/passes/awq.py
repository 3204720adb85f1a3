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
from ..algorithms.statistics import InputStatistics
from .infra import Pass, PassContext, PassResult
from .input_scaling import scale_inputs, weight_observer

PASS = "awq"


def run_awq(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Run the pass; see the module docstring for what it requires and guarantees."""
    if ctx.config.weight_method != "awq":
        return PassResult(gm, False)

    def choose(stats: InputStatistics, linears: list[fx.Node],
               weights: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, object]]:
        stats.require_data("weight_method='awq'")
        schemes = [weight_observer(gm, lin).scheme() for lin in linears]
        found = awq_search(stats.samples(), weights, schemes, ctx.config.awq_grid)
        return found.scale, {"alpha": found.alpha, "error": found.error,
                             "rtn_error": found.rtn_error}

    return scale_inputs(gm, ctx, PASS, "awq", choose)


# As for SmoothQuant, the unchanged float function is a numerical test, not a contract check.
AWQ = Pass(PASS, run_awq)
