"""Insert fake quantizers: the observed graph becomes a trainable simulation of the int8 model.

Requires: an observed graph (``insert_observers``): one ``WeightObserver`` call per quantized
weight, and in static mode one activation observer per distinct matmul input.
Guarantees:
  * every ``WeightObserver`` call is a ``WeightFakeQuant`` call (same ``fxq`` name, same scheme:
    bits, symmetry, granularity, pair-safe scales) on a tensor the gradient reaches: a weight that
    canonicalize read through a transposed view (``<w>_t``, GPT-2's ``Conv1D``) is read as
    ``torch.t(<w>)`` instead and the view is dropped; weights BatchNorm folding created are
    trainable;
  * static mode: every activation observer is an ``ActivationFakeQuant`` with a moving-average
    range; dynamic mode: each distinct input of a quantized linear / conv passes through one
    dynamic ``ActivationFakeQuant`` (per token for linears where the config asks for it);
    weight-only mode quantizes no activation;
  * no observer call is left. The forward pass computes what the converted model computes with
    the reference kernels; gradients are straight-through.
Why: quantization-aware training then trains the very decisions PTQ makes (which layers, bits,
tied tables, skip), simulated with the numerics the kernels use, and ``freeze_fake_quant`` can hand
the graph back to the ordinary CONVERT passes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.fx as fx

from ..fake_quantizers import ActivationFakeQuant, WeightFakeQuant
from ..graph import add_module, fetch_attr, kind_of, meta
from ..module_tree import set_submodule
from ..observers import Observer, WeightObserver
from .infra import Pass, PassContext, PassResult
from .nodes import left_over, node_arg, rewrite_module_calls, target_of


def transposed_base(gm: fx.GraphModule, target: str) -> str | None:
    """The parameter whose transposed view ``canonicalize`` registered as ``target``, or None."""
    base = target.removesuffix("_t")
    if base == target:
        return None
    try:
        view, original = fetch_attr(gm, target), fetch_attr(gm, base)
    except AttributeError:
        return None
    same = (isinstance(original, torch.Tensor) and original.dim() == 2
            and view.data_ptr() == original.data_ptr() and view.shape == original.t().shape
            and view.stride() == original.t().stride())
    return base if same else None


def _trainable_weight(gm: fx.GraphModule, weight: fx.Node, observer_call: fx.Node) -> fx.Node:
    """``weight``, or ``torch.t(base)`` where ``weight`` is a transposed view of ``base``."""
    base = transposed_base(gm, str(weight.target))
    if base is None:
        return weight
    with gm.graph.inserting_before(observer_call):
        transposed = gm.graph.call_function(torch.t, (gm.graph.get_attr(base),))
    observer_call.replace_input_with(weight, transposed)
    if not weight.users:
        gm.graph.erase_node(weight)
        owner, _, name = str(weight.target).rpartition(".")
        delattr(gm.get_submodule(owner) if owner else gm, name)
    return transposed


def _folded_parameters(gm: fx.GraphModule) -> None:
    """Weights and biases that BatchNorm folding registered (frozen) train with the model."""
    for node in gm.graph.nodes:
        if kind_of(node) != "conv" or "folded_batchnorm" not in meta(node):
            continue
        for arg in node.args[1:3]:
            while isinstance(arg, fx.Node) and arg.op == "call_module":  # through the quantizer
                arg = arg.args[0]
            if isinstance(arg, fx.Node) and arg.op == "get_attr":
                fetch_attr(gm, str(arg.target)).requires_grad_(True)


def _fake_quant_weight(gm: fx.GraphModule, node: fx.Node, observer: WeightObserver) -> None:
    weight = _trainable_weight(gm, node_arg(node, 0), node)
    channels = (fetch_attr(gm, target_of(weight)) if weight.op == "get_attr"
                else fetch_attr(gm, target_of(node_arg(weight, 0))).t()).shape[0]
    set_submodule(gm, str(node.target), WeightFakeQuant(observer, channels))


def _dynamic_kind(ctx: PassContext, node: fx.Node) -> Literal["dynamic", "dynamic_per_token"]:
    per_token = getattr(ctx.config, "per_token_activations", False)
    return "dynamic_per_token" if per_token and kind_of(node) == "linear" else "dynamic"


def _dynamic_activations(gm: fx.GraphModule, ctx: PassContext) -> bool:
    seen: dict[tuple[fx.Node, str], fx.Node] = {}
    for node in list(gm.graph.nodes):
        if kind_of(node) not in ("linear", "conv") or not meta(node).get("quantize"):
            continue
        x, kind = node.args[0], _dynamic_kind(ctx, node)
        if (x, kind) not in seen:
            module = ActivationFakeQuant(f"input of {meta(node)['source']}", kind,
                                         ctx.config.reduce_range)
            target = add_module(gm, meta(node)["source"], "act_obs", module)
            with gm.graph.inserting_before(node):
                seen[(x, kind)] = gm.graph.call_module(target, (x,))
        node.replace_input_with(x, seen[(x, kind)])
    return bool(seen)


def run_insert_fake_quant(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Run the pass; see the module docstring for what it requires and guarantees."""
    cfg = ctx.config

    def fake_quant_activation(gm: fx.GraphModule, node: fx.Node, observer: Observer) -> None:
        set_submodule(gm, target_of(node), ActivationFakeQuant(
            observer.target, "static", cfg.reduce_range, momentum=cfg.moving_average_momentum))

    modified = rewrite_module_calls(gm, [(WeightObserver, _fake_quant_weight),
                                         (Observer, fake_quant_activation)])
    _folded_parameters(gm)
    if cfg.mode == "dynamic":
        modified |= _dynamic_activations(gm, ctx)
    return PassResult(gm, modified)


def verify_insert_fake_quant(gm: fx.GraphModule) -> str | None:
    """Check that no observer (weight or activation) is still called; the first violation, or
    None."""
    return left_over(gm, (Observer, WeightObserver), "observer")


INSERT_FAKE_QUANT = Pass("insert_fake_quant", run_insert_fake_quant,
                         verify=verify_insert_fake_quant)
