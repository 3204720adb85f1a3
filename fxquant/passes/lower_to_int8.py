"""Lower fake to real: observers become int8 buffers and explicit quantize/dequantize ops.

Requires: an observed graph; in static mode, calibrated activation observers.
Guarantees:
  * each WeightObserver becomes ``fxquant.dequantize_weight(codes, scale, zero_point, 0)`` reading
    ``fxq.<source>_w_int8`` (torch.int8), ``_w_scale`` (float32) and ``_w_zp`` (int32) buffers;
    the float weight has no quantized user left (cleanup drops it); a group-wise weight becomes
    ``fxquant.dequantize_weight_grouped(codes, scale, zero_point, group_size)`` reading
    ``_w_int4`` (uint8, two codes per byte; 5..8 bits: ``_w_uint8``), ``_w_scale`` (float32
    ``[N, K / group_size]``) and ``_w_zp`` (uint8, same shape); codes an algorithm chose (GPTQ,
    ``WeightObserver.precomputed``) are used as they are;
  * biases of quantized ops move to ``fxq.<source>_bias`` so the float module can be dropped;
  * static mode: each activation observer becomes ``quantize_activation -> dequantize_activation``
    with the calibrated scale and zero-point (the ranges, in lowering order, also go to
    ``gm.meta["fxquant"]["activation_ranges"]`` for ``fxquant.save``); dynamic mode: each
    quantized matmul's input passes through ``fake_quantize_dynamic`` (a linear's through
    ``fake_quantize_dynamic_per_token`` with per-token activations); weight-only mode leaves
    activations in float.
The lowered graph computes exactly what the int8 model computes (with the reference kernels), so
it is the specification the fusion pass must preserve.
Why: it separates *what* the quantized model computes from *how fast* (fusion's job).
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .. import numerics, ops
from ..algorithms.groupwise import GroupedWeight
from ..graph import add_buffer, fetch_attr, kind_of, meta
from ..observers import Observer, WeightObserver
from .infra import Pass, PassContext, PassResult
from .nodes import left_over, node_arg, record, target_of

_DYNAMIC_QUANT = (ops.fake_quantize_dynamic, ops.fake_quantize_dynamic_per_token)


def _lower_weight(gm: fx.GraphModule, node: fx.Node, observer: WeightObserver) -> None:
    weight = node_arg(node, 0)
    qw = observer.quantize(fetch_attr(gm, target_of(weight)))  # GPTQ's codes, else round-to-nearest
    if isinstance(qw, GroupedWeight):
        codes_role = "w_int4" if qw.packed else "w_uint8"
        tensors = ((codes_role, qw.stored_codes()), ("w_scale", qw.scale),
                   ("w_zp", qw.zero_point))
        target, last = ops.dequantize_weight_grouped, qw.group_size
    else:
        tensors = (("w_int8", qw.codes), ("w_scale", qw.scale), ("w_zp", qw.zero_point))
        target, last = ops.dequantize_weight, qw.axis
    with gm.graph.inserting_before(node):
        attrs = [gm.graph.get_attr(add_buffer(gm, observer.target, role, tensor))
                 for role, tensor in tensors]
        deq = gm.graph.call_function(target, (*attrs, last))
    meta(deq).update(source=observer.target, bits=observer.bits, symmetric=observer.symmetric,
                     per_channel=observer.per_channel, pair_safe=observer.pair_safe)
    if observer.group_size:
        meta(deq)["group_size"] = observer.group_size
    node.replace_all_uses_with(deq)
    gm.graph.erase_node(node)


def _lower_activation(gm: fx.GraphModule, node: fx.Node, observer: Observer, rr: bool) -> None:
    lo, hi = observer.quant_range()
    scale, zero_point = numerics.activation_qparams(lo, hi, rr)
    with gm.graph.inserting_before(node):
        q = gm.graph.call_function(ops.quantize_activation, (node_arg(node, 0), scale, zero_point,
                                                             rr))
        dq = gm.graph.call_function(ops.dequantize_activation, (q, scale, zero_point))
    meta(q).update(range=(lo, hi), observer=type(observer).__name__, batches=observer.batches)
    # In lowering order: what a structural replay (fxquant.load) gives its observers back.
    gm.meta.setdefault("fxquant", {}).setdefault("activation_ranges", []).append(
        (lo, hi, observer.batches))
    node.replace_all_uses_with(dq)
    gm.graph.erase_node(node)


def _move_bias(gm: fx.GraphModule, node: fx.Node, moved: dict[str, str]) -> None:
    """Point ``node`` at an ``fxq`` copy of its bias (one copy per bias parameter, however many
    calls read it)."""
    bias = node.args[2] if len(node.args) > 2 else None
    if not isinstance(bias, fx.Node) or bias.op != "get_attr":
        return
    name = target_of(bias)
    if name not in moved:
        tensor = fetch_attr(gm, name).detach()
        moved[name] = add_buffer(gm, meta(node)["source"], "bias", tensor)
    with gm.graph.inserting_before(node):
        node.replace_input_with(bias, gm.graph.get_attr(moved[name]))


def _insert_dynamic_quant(
    gm: fx.GraphModule, node: fx.Node, rr: bool, seen: dict, per_token: bool = False
) -> None:
    x = node_arg(node, 0)
    op = ops.fake_quantize_dynamic_per_token if per_token else ops.fake_quantize_dynamic
    if (x, op) not in seen:
        with gm.graph.inserting_before(node):
            seen[(x, op)] = gm.graph.call_function(op, (x, rr))
    node.replace_input_with(x, seen[(x, op)])


def run_lower_to_int8(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Run the pass; see the module docstring for what it requires and guarantees."""
    rr = ctx.config.reduce_range
    modified = False
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        module = fetch_attr(gm, target_of(node))
        if isinstance(module, WeightObserver):
            _lower_weight(gm, node, module)
        elif isinstance(module, Observer):
            _lower_activation(gm, node, module, rr)
        else:
            continue
        modified = True
    dynamic_inputs: dict[fx.Node, fx.Node] = {}
    moved_biases: dict[str, str] = {}
    for node in list(gm.graph.nodes):
        if kind_of(node) and meta(node).get("quantize"):
            _move_bias(gm, node, moved_biases)
            if ctx.config.mode == "dynamic" and kind_of(node) in ("linear", "conv"):
                per_token = ctx.config.per_token_activations and kind_of(node) == "linear"
                _insert_dynamic_quant(gm, node, rr, dynamic_inputs, per_token)
    return PassResult(gm, modified)


def _unlowered(gm: fx.GraphModule, node: fx.Node) -> str | None:
    if node.target is ops.dequantize_weight:
        codes = fetch_attr(gm, target_of(node_arg(node, 0)))
        if codes.dtype != torch.int8:
            return f"reads {codes.dtype} codes, not int8"
    info = record(node)
    dynamic = info.get("quantize") and info.get("mode") == "dynamic"
    if dynamic and kind_of(node) in ("linear", "conv"):
        x = node.args[0]
        if not (isinstance(x, fx.Node) and x.target in _DYNAMIC_QUANT):
            return "dynamic mode, but its input is not quantized per call"
    return None


def verify_lower_to_int8(gm: fx.GraphModule) -> str | None:
    """Check that every ``dequantize_weight`` reads int8 codes, every dynamic quantized linear /
    conv reads an input quantized per call, and no observer is left; the first violation, or
    None."""
    for node in gm.graph.nodes:
        why = _unlowered(gm, node)
        if why is not None:
            return f"{node.name}: {why}"
    return left_over(gm, (Observer, WeightObserver), "observer")


LOWER_TO_INT8 = Pass("lower_to_int8", run_lower_to_int8, verify=verify_lower_to_int8)
