"""Insert input statistics: what SmoothQuant, AWQ and GPTQ need to see of each linear's input.

Requires: an annotated graph (``annotate``), before ``insert_observers``, so that a static
activation observer observes the statistics node (a scaling ``mul`` later put in front of the
statistics then sits before the activation quantization, where it belongs).
Guarantees: when ``QuantConfig.smoothquant_alpha`` is set or ``weight_method`` is ``"gptq"`` /
``"awq"``, each distinct input of the quantized linears passes through one
``fxq.<source>_in_stats`` :class:`InputStatistics` observer (with a Hessian for GPTQ, stored rows
for AWQ); each such linear records ``meta["fxquant"]["in_stats"]`` (the observer) and
``weight_shared`` (why its weight cannot be rescaled, or None). Otherwise the graph is unchanged.
Why: the three algorithms are fed by calibration; the calibrate pass runs the data, these
observers keep what it shows, and the convert-stage passes (``smooth_quant``, ``awq``, ``gptq``)
read it.
"""

from __future__ import annotations

import torch.fx as fx

from ..algorithms.statistics import InputStatistics
from ..config import QuantConfig
from ..graph import add_module, fetch_attr, kind_of, meta
from .infra import Pass, PassContext, PassResult
from .nodes import record, target_of

# Input rows kept per observer for AWQ's search (an upper bound on its cost and memory).
AWQ_SAMPLES = 2048


def _wanted(cfg: QuantConfig) -> bool:
    return cfg.smoothquant_alpha is not None or cfg.weight_method in ("gptq", "awq")


def _weight_shared(gm: fx.GraphModule, node: fx.Node, ctx: PassContext) -> str | None:
    """Why ``node``'s weight cannot be rescaled on its own, or None."""
    weight = node.args[1]
    if not isinstance(weight, fx.Node) or weight.op != "get_attr":
        return "weight is not a parameter"
    tensor = fetch_attr(gm, target_of(weight))
    readers = [n for n in gm.graph.nodes
               if n.op == "get_attr" and fetch_attr(gm, target_of(n)) is tensor
               for _ in n.users]
    elsewhere = ctx.weight_kinds.get(str(weight.target), set()) - {"linear"}
    if len(readers) > 1 or elsewhere:
        return "weight is tied to another use (e.g. an embedding table); rescaling it would " \
               "change that use too"
    return None


def run_insert_statistics(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Run the pass; see the module docstring for what it requires and guarantees."""
    cfg = ctx.config
    if not _wanted(cfg):
        return PassResult(gm, False)
    inserted: dict[fx.Node, fx.Node] = {}
    for node in list(gm.graph.nodes):
        if kind_of(node) != "linear" or not meta(node).get("quantize"):
            continue
        x = node.args[0]
        if x not in inserted:
            source = meta(node)["source"]
            observer = InputStatistics(
                f"input of {source}", with_hessian=cfg.weight_method == "gptq",
                max_samples=AWQ_SAMPLES if cfg.weight_method == "awq" else 0,
            )
            target = add_module(gm, source, "in_stats", observer)
            with gm.graph.inserting_before(node):
                inserted[x] = gm.graph.call_module(target, (x,))
        node.replace_input_with(x, inserted[x])
        meta(node).update(in_stats=inserted[x].target,
                          weight_shared=_weight_shared(gm, node, ctx))
    return PassResult(gm, bool(inserted))


def verify_insert_statistics(gm: fx.GraphModule) -> str | None:
    """Check that every linear that records ``in_stats`` reads its input through that observer; the
    first violation, or None."""
    for node in gm.graph.nodes:
        stats = record(node).get("in_stats") if kind_of(node) == "linear" else None
        x = node.args[0] if stats is not None else None
        if isinstance(x, fx.Node) and not (x.op == "call_module" and x.target == stats):
            return f"{node.name} does not read its input through {stats}"
    return None


INSERT_STATISTICS = Pass("insert_statistics", run_insert_statistics,
                         verify=verify_insert_statistics)
