"""Drop statistics: the ``InputStatistics`` observers have served; take them out of the graph.

Requires: ``smooth_quant``, ``awq`` and ``gptq`` have run (they read the statistics).
Guarantees: no call to an ``InputStatistics`` observer is left; each one's users read its input
(which may be the scaling ``mul`` SmoothQuant / AWQ put in front of it). Nothing else changes.
Why: ``lower_to_int8`` turns every remaining activation observer into quantize / dequantize ops;
statistics are not an activation range and must not reach it.
"""

from __future__ import annotations

import torch.fx as fx

from ..algorithms.statistics import InputStatistics
from .infra import Pass, PassContext, PassResult
from .input_scaling import statistics_nodes
from .nodes import left_over, node_arg


def run_drop_statistics(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Run the pass; see the module docstring for what it requires and guarantees."""
    nodes = statistics_nodes(gm)
    for node, _ in nodes:
        node.replace_all_uses_with(node_arg(node, 0))
        gm.graph.erase_node(node)
    return PassResult(gm, bool(nodes))


def verify_drop_statistics(gm: fx.GraphModule) -> str | None:
    """Check that no ``InputStatistics`` observer is still called; the first violation, or None."""
    return left_over(gm, InputStatistics, "statistics observer")


DROP_STATISTICS = Pass("drop_statistics", run_drop_statistics, verify=verify_drop_statistics)
