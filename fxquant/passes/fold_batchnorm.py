"""Fold an inference-mode BatchNorm into the convolution that feeds it, before quantization.

Requires: a canonical graph (``canonicalize``): convs are ``F.conv1d`` / ``F.conv2d`` with
``get_attr`` weights; the model is in eval mode (capture puts its copy there).
Guarantees: every ``conv -> BatchNorm`` whose conv output feeds only the BatchNorm, and whose
BatchNorm normalises with running statistics, becomes one conv with weight
``W * gamma / sqrt(var + eps)`` (per output channel) and bias ``(b - mean) * gamma / sqrt(var + eps)
+ beta``, computed in float64. The folded tensors are *new* parameters registered beside the conv's
weight (``<weight>_folded`` / ``<module>.bias_folded``); no existing tensor is written, so the
captured model's parameters (which may be the user's own) stay untouched, and a weight the conv
shares with other users keeps serving them. Both graph flavours are matched: ``nn.BatchNorm1d/2d``
module calls and ``F.batch_norm`` (``torch.fx.symbolic_trace``), ``aten.batch_norm`` and
``aten._native_batch_norm_legit_no_training`` (``torch.export``). A BatchNorm after a conv that is
left alone gets a reason in ``ctx.refusals["fold_batchnorm"]``.
Why: quantizing the folded weight quantizes what the model computes (the per-channel scales absorb
``gamma / sigma``), the int8 conv then needs no float BatchNorm pass after it, and the fp32 parts
of the model lose a pass over each activation too.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from ..graph import fetch_attr, kind_of, meta
from .batchnorm_forms import BatchNorm, read_batchnorm
from .conv_args import BIAS, DEFAULTS
from .infra import Pass, PassContext, PassResult
from .nodes import node_arg, target_of

PASS = "fold_batchnorm"


def _conv_refusal(gm: fx.GraphModule, conv: fx.Node) -> str | None:
    if len(conv.users) > 1:
        return "conv output has users besides the BatchNorm"
    if conv.kwargs:
        return "conv called with keyword arguments"
    weight = conv.args[1]
    if not isinstance(weight, fx.Node) or weight.op != "get_attr":
        return "conv weight is computed in the graph"
    bias = conv.args[BIAS] if len(conv.args) > BIAS else None
    if bias is not None and (not isinstance(bias, fx.Node) or bias.op != "get_attr"):
        return "conv bias is computed in the graph"
    return None


def _folded(gm: fx.GraphModule, conv: fx.Node, bn: BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    weight = fetch_attr(gm, target_of(node_arg(conv, 1))).detach()
    has_bias = len(conv.args) > BIAS and conv.args[BIAS] is not None
    bias = fetch_attr(gm, target_of(node_arg(conv, BIAS))).detach() if has_bias else None
    factor = torch.rsqrt(bn.var.double() + bn.eps)
    if bn.weight is not None:
        factor = factor * bn.weight.double()
    shift = -bn.mean.double() if bias is None else bias.double() - bn.mean.double()
    new_bias = shift * factor + (0.0 if bn.bias is None else bn.bias.double())
    new_weight = weight.double() * factor.reshape(-1, *[1] * (weight.dim() - 1))
    return new_weight.to(weight.dtype), new_bias.to(weight.dtype)


def _register(gm: fx.GraphModule, beside: str, name: str, tensor: torch.Tensor) -> str:
    """A new parameter ``name`` (made unique) in the module that owns ``beside``."""
    owner_path = beside.rpartition(".")[0]
    owner = fetch_attr(gm, owner_path) if owner_path else gm
    unique, i = name, 1
    while hasattr(owner, unique):
        unique, i = f"{name}_{i}", i + 1
    owner.register_parameter(unique, nn.Parameter(tensor, requires_grad=False))
    return f"{owner_path}.{unique}" if owner_path else unique


def _fold(gm: fx.GraphModule, conv: fx.Node, bn: BatchNorm) -> None:
    weight_target = target_of(node_arg(conv, 1))
    new_weight, new_bias = _folded(gm, conv, bn)
    w_target = _register(gm, weight_target, weight_target.rpartition(".")[2] + "_folded",
                         new_weight)
    b_target = _register(gm, weight_target, "bias_folded", new_bias)
    with gm.graph.inserting_before(conv):
        w_node, b_node = gm.graph.get_attr(w_target), gm.graph.get_attr(b_target)
    args = list(conv.args) + list(DEFAULTS[len(conv.args):BIAS + 1])
    old = [a for a in args[1:BIAS + 1] if isinstance(a, fx.Node)]
    args[1], args[BIAS] = w_node, b_node
    conv.args = tuple(args)
    bn.output.replace_all_uses_with(conv)
    for node in (*bn.erase, *old):
        if not node.users:
            gm.graph.erase_node(node)
    meta(conv)["folded_batchnorm"] = bn.name


def _foldable(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, BatchNorm] | str | None:
    """(conv, BatchNorm) when ``node`` is a BatchNorm this pass folds into the conv feeding it,
    the reason when it is one after a conv but is left alone, else None."""
    bn = read_batchnorm(gm, node)
    conv = None if bn is None else bn.input
    if bn is None or not isinstance(conv, fx.Node) or kind_of(conv) != "conv":
        return None
    reason = bn.refusal or _conv_refusal(gm, conv)
    if reason is None and bn.mean.numel() != fetch_attr(gm, target_of(node_arg(conv, 1))).shape[0]:
        reason = "BatchNorm and conv disagree on the number of channels"
    return (conv, bn) if reason is None else reason


def run_fold_batchnorm(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Run the pass; see the module docstring for what it requires and guarantees."""
    modified = False
    for node in list(gm.graph.nodes):
        found = _foldable(gm, node)
        if isinstance(found, str):
            ctx.refuse(PASS, node, found)
        elif found is not None:
            _fold(gm, *found)
            modified = True
    return PassResult(gm, modified)


def verify_fold_batchnorm(gm: fx.GraphModule) -> str | None:
    """Check that no BatchNorm this pass folds into the conv feeding it is left; the first
    violation, or None."""
    for node in gm.graph.nodes:
        if isinstance(_foldable(gm, node), tuple):
            return f"the BatchNorm {node.name} after a conv is left unfolded"
    return None


FOLD_BATCHNORM = Pass(PASS, run_fold_batchnorm, verify=verify_fold_batchnorm)
