"""Fuse ``dequantize -> matmul`` into one int8 op whose kernel never builds a float weight.

Requires: a lowered graph (``lower_to_int8``).
Guarantees: every ``F.linear`` whose weight is ``dequantize_weight(...)`` along axis 0 becomes one
``fxquant.linear_dynamic`` / ``linear_dynamic_per_token`` / ``linear_static`` /
``linear_weight_only`` call (chosen by the form of its input: ``fake_quantize_dynamic``,
``fake_quantize_dynamic_per_token``, ``dequantize_activation(quantize_activation(x))`` or a plain
float tensor); an ``F.linear`` of float input and ``dequantize_weight_grouped(...)`` becomes
``fxquant.linear_weight_only_grouped``; every ``F.conv1d`` / ``F.conv2d`` likewise becomes
``fxquant.conv_dynamic`` / ``conv_static`` (a weight-only conv stays dequantize + conv: no int8
kernel takes float activations); and every ``F.embedding`` on a dequantized table becomes
``fxquant.embedding``, which dequantizes only the rows it gathers. The fused op reads the same int8
buffers and computes the same function as the pattern it replaces (parity-tested against the
reference kernels). Nodes left unfused get a reason in ``ctx.refusals["fuse_dequant_matmul"]``.
Why: ``dequantize`` followed by a float matmul materialises the fp32 weight on every call, which
is what made the seed document's int8 model 5.5x slower than fp32.

Each rewrite is pattern -> check -> rewrite; a check returns the reason it refuses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch.fx as fx

from .. import ops
from ..errors import PassError
from ..graph import fetch_attr, kind_of, meta
from .conv_args import BIAS, ConvGeometry, conv_geometry
from .infra import Pass, PassContext, PassResult
from .nodes import node_arg, record, target_of

PASS = "fuse_dequant_matmul"
WeightArgs = tuple[fx.Node, fx.Node, fx.Node]  # codes, scale, zero_point (get_attr nodes)


def _weight_args(node: fx.Node) -> WeightArgs | str:
    """(codes, scale, zero_point) of a ``dequantize_weight`` along axis 0, or why not."""
    w = node.args[1] if len(node.args) > 1 else None
    if not isinstance(w, fx.Node) or w.target is not ops.dequantize_weight:
        return "weight is not an int8 dequantize"
    if w.args[3] != 0:
        return f"weight is quantized along axis {w.args[3]}, the kernels need axis 0"
    return node_arg(w, 0), node_arg(w, 1), node_arg(w, 2)


def _accepted_weight(node: fx.Node) -> WeightArgs:
    """The weight arguments of a node its check has accepted."""
    weight = _weight_args(node)
    if isinstance(weight, str):
        raise PassError(f"{node.name}: rewritten although {weight}; this is an fxquant bug")
    return weight


def _activation_form(x: object) -> tuple[str, tuple]:
    """Which mode the matmul's input says, and the arguments the fused op needs for it."""
    if isinstance(x, fx.Node) and x.target is ops.fake_quantize_dynamic:
        return "dynamic", (x.args[0], x.args[1])
    if isinstance(x, fx.Node) and x.target is ops.fake_quantize_dynamic_per_token:
        return "dynamic_per_token", (x.args[0], x.args[1])
    if isinstance(x, fx.Node) and x.target is ops.dequantize_activation:
        q = x.args[0]
        if isinstance(q, fx.Node) and q.target is ops.quantize_activation:
            return "static", tuple(q.args)
    return "weight_only", (x,)


def _grouped_args(node: fx.Node) -> tuple | None:
    """(codes, scale, zero_point, group_size) of a ``dequantize_weight_grouped`` weight."""
    w = node.args[1] if len(node.args) > 1 else None
    if isinstance(w, fx.Node) and w.target is ops.dequantize_weight_grouped:
        return tuple(w.args)
    return None


def check_linear(node: fx.Node) -> str | None:
    """Why an ``F.linear`` cannot become a fused op (keyword arguments, a weight that is not an
    axis-0 ``dequantize_weight``, a group-wise weight with quantized activations), or None."""
    if node.kwargs:
        return "F.linear called with keyword arguments"
    if _grouped_args(node) is not None:
        form = _activation_form(node.args[0])[0]
        if form != "weight_only":
            return f"group-wise weight with {form} activations: no fused kernel takes both"
        return None
    weight = _weight_args(node)
    return weight if isinstance(weight, str) else None


def _int8_linear(node: fx.Node, bias: object) -> tuple[Any, tuple]:
    """The fused op for a per-channel int8 weight, chosen by the form of the input."""
    codes, scale, zp = _accepted_weight(node)
    form, act = _activation_form(node.args[0])
    if form == "dynamic":
        x, rr = act
        return ops.linear_dynamic, (x, codes, scale, zp, bias, rr)
    if form == "dynamic_per_token":
        x, rr = act
        return ops.linear_dynamic_per_token, (x, codes, scale, zp, bias, rr)
    if form == "static":
        x, x_scale, x_zp, rr = act
        return ops.linear_static, (x, x_scale, x_zp, rr, codes, scale, zp, bias)
    return ops.linear_weight_only, (act[0], codes, scale, zp, bias)


def rewrite_linear(gm: fx.GraphModule, node: fx.Node) -> fx.Node:
    """Insert the fused call for an accepted ``F.linear`` before it: ``linear_weight_only_grouped``
    for a group-wise weight, else the op its input's form picks."""
    bias = node.args[2] if len(node.args) > 2 else None
    grouped = _grouped_args(node)
    if grouped is not None:
        codes, scale, zp, group_size = grouped
        target: Any = ops.linear_weight_only_grouped
        args: tuple = (node.args[0], codes, scale, zp, bias, group_size)
    else:
        target, args = _int8_linear(node, bias)
    with gm.graph.inserting_before(node):
        fused = gm.graph.call_function(target, args)
    return fused


def check_embedding(node: fx.Node) -> str | None:
    """Why an ``F.embedding`` cannot become ``fxquant.embedding`` (``max_norm`` /
    ``scale_grad_by_freq`` / ``sparse``, a weight that is not an axis-0 ``dequantize_weight``), or
    None."""
    extra = [a for a in node.args[3:] if a not in (None, False, 2.0)]
    if extra or any(v not in (None, False, 2.0) for k, v in node.kwargs.items()
                    if k != "padding_idx"):
        return "embedding with max_norm / scale_grad_by_freq / sparse"
    weight = _weight_args(node)
    return weight if isinstance(weight, str) else None


def rewrite_embedding(gm: fx.GraphModule, node: fx.Node) -> fx.Node:
    """Insert the ``fxquant.embedding`` call for an accepted ``F.embedding`` before it."""
    codes, scale, zp = _accepted_weight(node)
    with gm.graph.inserting_before(node):
        return gm.graph.call_function(ops.embedding, (node.args[0], codes, scale, zp))


def _conv_geometry(node: fx.Node) -> ConvGeometry | str:
    weight = _weight_args(node)
    if isinstance(weight, str):
        return weight
    gm = node.graph.owning_module
    if gm is None:
        return "the conv's graph belongs to no module"
    codes, scale = (fetch_attr(gm, target_of(w)) for w in weight[:2])
    if tuple(scale.shape) != (codes.shape[0],):
        return "the int8 conv kernel needs one weight scale per output channel"
    return conv_geometry(node, tuple(codes.shape[2:]))


def check_conv(node: fx.Node) -> str | None:
    """Why an ``F.conv*`` cannot become ``conv_dynamic`` / ``conv_static`` (keyword arguments, its
    weight or geometry, activations neither dynamic nor static), or None."""
    if node.kwargs:
        return "conv called with keyword arguments"
    geometry = _conv_geometry(node)
    if isinstance(geometry, str):
        return geometry
    form = _activation_form(node.args[0])[0]
    if form == "weight_only":
        return "weight-only conv: no int8 conv kernel takes float activations; dequantize + conv"
    if form not in ("dynamic", "static"):
        return f"{form} activations: no int8 conv kernel takes them; dequantize + conv"
    return None


def rewrite_conv(gm: fx.GraphModule, node: fx.Node) -> fx.Node:
    """``F.conv*(act, dequantize_weight(...), bias, ...)`` -> ``conv_dynamic`` / ``conv_static``
    (ReLU not fused yet: ``fuse_conv_relu`` does that)."""
    codes, scale, zp = _accepted_weight(node)
    g = cast(ConvGeometry, _conv_geometry(node))  # check_conv has accepted the node
    geometry = (g.stride, g.padding, g.dilation, g.groups, False)
    bias = node.args[BIAS] if len(node.args) > BIAS else None
    form, act = _activation_form(node.args[0])
    target: Any
    args: tuple
    if form == "dynamic":
        x, rr = act
        target, args = ops.conv_dynamic, (x, codes, scale, zp, bias, rr, *geometry)
    else:
        x, x_scale, x_zp, rr = act
        target, args = ops.conv_static, (x, x_scale, x_zp, rr, codes, scale, zp, bias, *geometry)
    with gm.graph.inserting_before(node):
        return gm.graph.call_function(target, args)


Rule = tuple[Callable[[fx.Node], "str | None"], Callable[[fx.GraphModule, fx.Node], fx.Node]]
_RULES: dict[str, Rule] = {
    "linear": (check_linear, rewrite_linear),
    "conv": (check_conv, rewrite_conv),
    "embedding": (check_embedding, rewrite_embedding),
}


def run_fuse_dequant_matmul(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Run the pass; see the module docstring for what it requires and guarantees."""
    modified = False
    for node in list(gm.graph.nodes):
        kind = kind_of(node)
        if kind is None or not meta(node).get("quantize"):
            continue
        if kind not in _RULES:
            ctx.refuse(PASS, node, f"no fused int8 {kind} kernel; runs dequantize + float {kind}")
            continue
        check, rewrite = _RULES[kind]
        reason = check(node)
        if reason is not None:
            ctx.refuse(PASS, node, reason)
            continue
        fused = rewrite(gm, node)
        fused.meta.update(node.meta)
        node.replace_all_uses_with(fused)
        gm.graph.erase_node(node)
        modified = True
    return PassResult(gm, modified)


def verify_fuse_dequant_matmul(gm: fx.GraphModule) -> str | None:
    """Check that no quantized node the fused kernels accept is left unfused; the first violation,
    or None."""
    for node in gm.graph.nodes:
        kind = kind_of(node)
        if kind in _RULES and record(node).get("quantize") and _RULES[kind][0](node) is None:
            return f"{node.name}: a {kind} the fused kernels take is left unfused"
    return None


FUSE_DEQUANT_MATMUL = Pass(PASS, run_fuse_dequant_matmul, verify=verify_fuse_dequant_matmul)
