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
from ..algorithms.statistics import InputStatistics
from .infra import Pass, PassContext, PassResult
from .input_scaling import scale_inputs

PASS = "smooth_quant"


def run_smooth_quant(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Run the pass; see the module docstring for what it requires and guarantees."""
    alpha = ctx.config.smoothquant_alpha
    if alpha is None:
        return PassResult(gm, False)

    def choose(stats: InputStatistics, linears: list[fx.Node],
               weights: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, object]]:
        stats.require_data(f"SmoothQuant (smoothquant_alpha={alpha}), in dynamic mode too,")
        return smoothquant_scales(stats.abs_max, weights, alpha), {}

    return scale_inputs(gm, ctx, PASS, "smoothquant", choose, fixed={"alpha": alpha})


# The float function is unchanged: tested numerically (tests/passes/test_smooth_quant.py), too
# costly to check between passes.
SMOOTH_QUANT = Pass(PASS, run_smooth_quant)
