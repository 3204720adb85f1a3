"""Canonicalise: bring every quantizable op to one functional form.

Requires: a GraphModule captured from a float model.
Guarantees: every ``nn.Linear``, ``nn.Conv1d``/``nn.Conv2d`` (zero padding mode) and
``nn.Embedding`` (no ``max_norm``) call is a ``call_function`` to ``F.linear`` / ``F.conv1d`` /
``F.conv2d`` / ``F.embedding`` whose weight (argument 1) and bias are ``get_attr`` nodes, and
``node.meta["fxquant"]["source"]`` names the module the op came from. The other spellings of a
parameter matmul, from symbolic tracing or ``torch.export`` (``aten.linear``, ``addmm`` with a
parameter, ``matmul``/``@`` with a parameter, ``aten.embedding``, ``aten.conv*``), are rewritten
to the same functional form by the rules in ``functional_forms``.
Why: later passes then match one pattern per op kind instead of one per way of writing it; a module
call and a functional call on a parameter quantize the same way.
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..graph import fetch_attr, kind_of, meta, source_of_weight
from .functional_forms import RULES
from .infra import Pass, PassContext, PassResult
from .nodes import record, target_of

PASS = "canonicalize"


def _supported(module: nn.Module) -> bool:
    if type(module) in (nn.Conv1d, nn.Conv2d):
        return module.padding_mode == "zeros"
    return type(module) is nn.Linear or (type(module) is nn.Embedding and module.max_norm is None)


def _functional_call(
    graph: fx.Graph, node: fx.Node, module: nn.Module
) -> fx.Node | None:
    if not _supported(module):
        return None  # decide before adding nodes: a refusal must leave the graph untouched
    x = node.args[0] if node.args else node.kwargs.get("input")
    w = graph.get_attr(f"{node.target}.weight")
    b = graph.get_attr(f"{node.target}.bias") if getattr(module, "bias", None) is not None else None
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        fn = F.conv1d if type(module) is nn.Conv1d else F.conv2d
        args = (x, w, b, module.stride, module.padding, module.dilation, module.groups)
        return graph.call_function(fn, args)
    if isinstance(module, nn.Embedding):
        return graph.call_function(F.embedding, (x, w, module.padding_idx))
    return graph.call_function(F.linear, (x, w, b))


def _modules_with_weights(gm: fx.GraphModule) -> set[str]:
    return {n for n, m in gm.named_modules() if type(m) in (nn.Linear, nn.Conv1d, nn.Conv2d,
                                                             nn.Embedding)}


def _canonicalize_module_call(gm: fx.GraphModule, node: fx.Node, ctx: PassContext) -> bool:
    module = fetch_attr(gm, target_of(node))
    with gm.graph.inserting_before(node):
        new = _functional_call(gm.graph, node, module)
    if new is None:
        ctx.refuse(PASS, node, f"{type(module).__name__} options not supported")
        return False
    meta(new)["source"] = node.target
    new.meta.update({k: v for k, v in node.meta.items() if k != "fxquant"})
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return True


def _canonicalize_function_call(gm: fx.GraphModule, node: fx.Node, ctx: PassContext) -> bool:
    result = RULES[node.target](gm, node)
    if isinstance(result, str):
        ctx.refuse(PASS, node, result)
        return False
    with gm.graph.inserting_before(node):
        new = gm.graph.call_function(result.fn, result.args)
    new.meta.update({k: v for k, v in node.meta.items() if k != "fxquant"})
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return True


def _record_source(node: fx.Node) -> None:
    weight = node.args[1] if len(node.args) > 1 else None  # F.linear(x, weight=w): no weight
    if isinstance(weight, fx.Node) and weight.op == "get_attr" and "source" not in meta(node):
        meta(node)["source"] = source_of_weight(target_of(weight))


def _module_candidate(node: fx.Node, candidates: set[str]) -> bool:
    return node.op == "call_module" and node.target in candidates and len(node.args) == 1


def run_canonicalize(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Run the pass; see the module docstring for what it requires and guarantees."""
    candidates = _modules_with_weights(gm)
    modified = False
    for node in list(gm.graph.nodes):
        if _module_candidate(node, candidates):
            modified |= _canonicalize_module_call(gm, node, ctx)
        elif node.op == "call_function" and node.target in RULES:
            modified |= _canonicalize_function_call(gm, node, ctx)
    for node in gm.graph.nodes:
        if kind_of(node):
            _record_source(node)
    return PassResult(gm, modified)


def verify_canonicalize(gm: fx.GraphModule) -> str | None:
    """Check that no supported weight module is still called as a module and that every canonical op
    on a ``get_attr`` weight records its ``source``; the first violation, or None."""
    candidates = _modules_with_weights(gm)
    for node in gm.graph.nodes:
        if _module_candidate(node, candidates) and _supported(fetch_attr(gm, target_of(node))):
            return f"{node.name} still calls the module {node.target}"
        weight = node.args[1] if kind_of(node) and len(node.args) > 1 else None
        if isinstance(weight, fx.Node) and weight.op == "get_attr" and "source" not in record(node):
            return f"{node.name} records no source"
    return None


CANONICALIZE = Pass(PASS, run_canonicalize, verify=verify_canonicalize)
