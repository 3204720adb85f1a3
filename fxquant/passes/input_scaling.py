"""Mechanics shared by SmoothQuant and AWQ: divide a linear input by per-channel scales ``s`` and
multiply the weight columns of the linears reading it by ``s``, keeping the float function.

Not a pass: ``smooth_quant`` and ``awq`` decide ``s``; this module applies it (and runs the loop
both passes share, :func:`scale_inputs`).

* The weights: each weight parameter is replaced (never written in place: the converted model may
  still share the user's parameters) by ``W * s`` along its input channels.
* The input: when the statistics node reads a normalisation's output that nothing else reads, and
  that normalisation's affine parameters are its own, they are divided by ``s`` (LayerNorm: weight
  and bias; RMSNorm: weight; a ``mul`` by a 1-D parameter, as Llama's RMSNorm ends). Otherwise a
  ``mul`` by the buffer ``fxq.<source>_smooth`` (= ``1 / s``) is inserted on the path to those
  linears only, so other readers still see the unscaled tensor.
* The statistics are rescaled (:meth:`InputStatistics.rescale`), and a static activation observer
  behind them gets the exact range of the scaled input.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.node import Argument

from ..algorithms.statistics import InputStatistics
from ..errors import PassError
from ..graph import add_buffer, fetch_attr, kind_of, meta
from ..observers import MinMaxObserver, Observer, WeightObserver
from .infra import PassContext, PassResult
from .nodes import node_arg, target_of

M = TypeVar("M", bound=nn.Module)
_NORM_FUNCTIONS: dict[object, tuple[str, ...]] = {
    F.layer_norm: ("weight", "bias"),
    torch.ops.aten.layer_norm.default: ("weight", "bias"),
}
_NORM_MODULES: tuple[type[nn.Module], ...] = (nn.LayerNorm,)
if hasattr(F, "rms_norm"):
    _NORM_FUNCTIONS[F.rms_norm] = ("weight",)
    _NORM_FUNCTIONS[torch.ops.aten.rms_norm.default] = ("weight",)
if hasattr(nn, "RMSNorm"):
    _NORM_MODULES = (nn.LayerNorm, nn.RMSNorm)
_MULS = (operator.mul, torch.mul, torch.ops.aten.mul.Tensor)
_ARG_INDEX = {"weight": 2, "bias": 3}


def statistics_nodes(gm: fx.GraphModule) -> list[tuple[fx.Node, InputStatistics]]:
    """Every call to an ``InputStatistics`` observer in ``gm``, with the observer."""
    return [(n, fetch_attr(gm, target_of(n))) for n in gm.graph.nodes
            if _observer(gm, n, InputStatistics) is not None]


def _observer(gm: fx.GraphModule, node: Argument, cls: type[M]) -> M | None:
    """The module ``node`` calls when it is a ``cls``, else None."""
    if not isinstance(node, fx.Node) or node.op != "call_module":
        return None
    module = fetch_attr(gm, target_of(node))
    return module if isinstance(module, cls) else None


def scaled_linears(gm: fx.GraphModule, stats_node: fx.Node) -> list[fx.Node]:
    """The quantized linears that read ``stats_node`` (directly or through a static activation
    observer)."""
    found = []
    for user in stats_node.users:
        readers = list(user.users) if _observer(gm, user, Observer) else [user]
        found += [r for r in readers if kind_of(r) == "linear" and meta(r).get("quantize")]
    return found


def weight_target(linear: fx.Node) -> str:
    """The get_attr target of a quantized linear's weight (behind its weight observer)."""
    w = node_arg(linear, 1)
    return target_of(node_arg(w, 0) if w.op == "call_module" else w)


def weight_observer(gm: fx.GraphModule, linear: fx.Node) -> WeightObserver:
    """The ``WeightObserver`` on ``linear``'s weight; PassError if there is none."""
    module = _observer(gm, linear.args[1], WeightObserver)
    if module is None:
        raise PassError(f"{linear.name}: weight has no WeightObserver; run insert_observers first")
    return module


def refusal_reason(gm: fx.GraphModule, stats_node: fx.Node, linears: list[fx.Node]) -> str | None:
    """Why the input behind ``stats_node`` cannot be rescaled, or None."""
    if not linears:
        return "no quantized linear reads this input"
    shared = [meta(lin).get("weight_shared") for lin in linears]
    if any(shared):
        return next(r for r in shared if r)
    others = [u for u in stats_node.users
              if not _observer(gm, u, Observer) and kind_of(u) != "linear"]
    if others:
        return f"the input also feeds {others[0].name}, which is not a quantized linear"
    return None


def _replace_tensor(owner: nn.Module, name: str, value: torch.Tensor) -> None:
    if name in owner._parameters:
        owner._parameters[name] = nn.Parameter(value.contiguous(), requires_grad=False)
    else:
        owner._buffers[name] = value.contiguous()


def _owner(gm: fx.GraphModule, target: str) -> tuple[nn.Module, str]:
    path, _, name = target.rpartition(".")
    return (gm.get_submodule(path) if path else gm), name


def _readers(gm: fx.GraphModule, tensor: torch.Tensor) -> int:
    return sum(1 for n in gm.graph.nodes
               if n.op == "get_attr" and fetch_attr(gm, n.target) is tensor)


def _affine_args(gm: fx.GraphModule, node: fx.Node) -> list[Argument] | None:
    """The affine parameters a normalisation function (or the ``mul`` that ends one) applies, or
    None when ``node`` is neither or has no weight."""
    names = _NORM_FUNCTIONS.get(node.target)
    if names is not None:
        args = [node.kwargs.get(name, node.args[_ARG_INDEX[name]]
                                if len(node.args) > _ARG_INDEX[name] else None)
                for name in names]
        return None if args[0] is None else [a for a in args if a is not None]
    if node.target in _MULS and len(node.args) == 2:
        params = [a for a in node.args if isinstance(a, fx.Node) and a.op == "get_attr"]
        if len(params) == 1 and fetch_attr(gm, target_of(params[0])).dim() == 1:
            return list(params)
    return None


def _affine_of_function(gm: fx.GraphModule, node: fx.Node) -> list[tuple[nn.Module, str]] | None:
    args = _affine_args(gm, node)
    if args is None:
        return None
    params = [a for a in args if isinstance(a, fx.Node) and a.op == "get_attr"]
    if len(params) != len(args):
        return None
    if any(_readers(gm, fetch_attr(gm, target_of(p))) != 1 for p in params):
        return None
    return [_owner(gm, target_of(p)) for p in params]


def _foldable(gm: fx.GraphModule, stats_node: fx.Node) -> list[tuple[nn.Module, str]] | None:
    """The (module, attribute) pairs to divide by ``s`` when the input comes straight from a
    normalisation that nothing else reads, else None."""
    producer = stats_node.args[0]
    if not isinstance(producer, fx.Node) or len(producer.users) != 1:
        return None
    if producer.op == "call_module":
        module = fetch_attr(gm, target_of(producer))
        calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == producer.target]
        if not isinstance(module, _NORM_MODULES) or module.weight is None or len(calls) != 1:
            return None
        return [(module, name) for name in ("weight", "bias") if getattr(module, name, None)
                is not None]
    if producer.op == "call_function":
        return _affine_of_function(gm, producer)
    return None


def _divide_input(gm: fx.GraphModule, stats_node: fx.Node, s: torch.Tensor, source: str) -> str:
    """Divide what ``stats_node`` observes by ``s``; returns where the division went."""
    folded = _foldable(gm, stats_node)
    if folded is not None and all(getattr(m, n).numel() == s.numel() for m, n in folded):
        for module, name in folded:
            _replace_tensor(module, name, getattr(module, name).detach() / s)
        return f"folded into {node_arg(stats_node, 0).name}"
    target = add_buffer(gm, source, "smooth", (1.0 / s).contiguous())
    x = node_arg(stats_node, 0)
    with gm.graph.inserting_before(stats_node):
        factor = gm.graph.get_attr(target)
        scaled = gm.graph.call_function(torch.mul, (x, factor))
    meta(scaled).update(source=source, role="smooth")
    stats_node.replace_input_with(x, scaled)
    return "mul"


def _update_activation_observers(gm: fx.GraphModule, stats_node: fx.Node,
                                 stats: InputStatistics) -> None:
    for user in stats_node.users:
        observer = _observer(gm, user, Observer)
        if observer is None or stats.min_val is None:  # (no data: a structural replay)
            continue
        if not isinstance(observer, MinMaxObserver):
            raise PassError(f"{observer.target}: only a min-max activation observer can follow an "
                            "input scaling (QuantConfig validation should have refused this)")
        observer.min_val, observer.max_val = stats.range_after()


def apply_input_scale(gm: fx.GraphModule, stats_node: fx.Node, linears: list[fx.Node],
                      s: torch.Tensor) -> str:
    """Scale the weights of ``linears`` by ``s`` and their shared input by ``1 / s``; returns
    where the division went ("folded into <node>" or "mul")."""
    stats = fetch_attr(gm, target_of(stats_node))
    for target in dict.fromkeys(weight_target(lin) for lin in linears):
        owner, name = _owner(gm, target)
        _replace_tensor(owner, name, getattr(owner, name).detach() * s)
    where = _divide_input(gm, stats_node, s, meta(linears[0]).get("source", "input"))
    stats.rescale(s)
    _update_activation_observers(gm, stats_node, stats)
    return where


# Chooses ``s`` for one input from its statistics, its linears and their weights, with what to
# record about the choice.
ChooseScale = Callable[[InputStatistics, list[fx.Node], list[torch.Tensor]],
                       tuple[torch.Tensor, dict[str, object]]]


def scale_inputs(gm: fx.GraphModule, ctx: PassContext, pass_name: str, meta_key: str,
                 choose: ChooseScale, fixed: dict[str, object] | None = None) -> PassResult:
    """For each input read only by quantized linears: ``choose`` its ``s``, apply it, and record
    ``{**fixed, **chosen, "input": where}`` in each linear's ``meta["fxquant"][meta_key]``; an
    input left as it is gets a reason under ``pass_name``. In structural replay (``ctx.replay``)
    ``s = 1`` and nothing is chosen: the saved tensors are loaded over it."""
    modified = False
    for stats_node, stats in statistics_nodes(gm):
        linears = scaled_linears(gm, stats_node)
        reason = refusal_reason(gm, stats_node, linears)
        if reason is not None:
            ctx.refuse(pass_name, stats_node, reason)
            continue
        weights = [fetch_attr(gm, weight_target(lin)) for lin in linears]
        record = dict(fixed or {})
        if ctx.replay:
            s = torch.ones(weights[0].shape[1], device=weights[0].device)
        else:
            s, chosen = choose(stats, linears, weights)
            record.update(chosen)
        record["input"] = apply_input_scale(gm, stats_node, linears, s)
        for lin in linears:
            meta(lin)[meta_key] = record
        modified = True
    return PassResult(gm, modified)
