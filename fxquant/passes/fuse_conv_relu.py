"""Fuse a ReLU into the int8 convolution that feeds it.

Requires: a fused graph (``fuse_dequant_matmul``): ``fxquant.conv_dynamic`` / ``conv_static``
calls, whose last argument says whether the kernel applies a ReLU.
Guarantees: a conv op without ReLU whose *only* user is a ReLU — ``F.relu``, ``torch.relu``,
``torch.relu_``, ``aten.relu`` / ``aten.relu_``, ``Tensor.relu`` / ``relu_`` or an ``nn.ReLU``
module, in place or not — takes the ReLU (``relu=True``) and the ReLU node is gone. The graph
computes the same function. A conv whose output also feeds something else keeps its ReLU apart,
with a reason in ``ctx.refusals["fuse_conv_relu"]``.
Why: oneDNN applies the ReLU to the accumulators before it writes the float output, which saves
one pass over the activation per conv-ReLU pair (ResNet-18: 9 of its 20 convs).
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..graph import fetch_attr
from .infra import Pass, PassContext, PassResult

PASS = "fuse_conv_relu"
_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_, torch.ops.aten.relu.default,
                   torch.ops.aten.relu_.default)
_RELU_METHODS = ("relu", "relu_")


def is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` applies a plain ReLU to its first argument (and does nothing else)."""
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in _RELU_METHODS
    if node.op == "call_module":
        return type(fetch_attr(gm, str(node.target))) is nn.ReLU
    return False


def _relu_user(gm: fx.GraphModule, conv: fx.Node) -> fx.Node | str | None:
    """The ReLU to fuse into ``conv``, the reason not to, or None when no ReLU follows it."""
    relus = [u for u in conv.users if is_relu(gm, u) and u.args and u.args[0] is conv]
    if not relus:
        return None
    if len(conv.users) > 1:
        return "conv output has users besides the ReLU"
    return relus[0]


def _conv_without_relu(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in ops.FUSED_CONV_OPS and not node.args[-1]


def _fuse(gm: fx.GraphModule, conv: fx.Node, relu: fx.Node) -> None:
    conv.args = (*conv.args[:-1], True)
    relu.replace_all_uses_with(conv)
    gm.graph.erase_node(relu)


def run_fuse_conv_relu(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Run the pass; see the module docstring for what it requires and guarantees."""
    modified = False
    for node in list(gm.graph.nodes):
        relu = _relu_user(gm, node) if _conv_without_relu(node) else None
        if isinstance(relu, str):
            ctx.refuse(PASS, node, relu)
        elif relu is not None:
            _fuse(gm, node, relu)
            modified = True
    return PassResult(gm, modified)


def verify_fuse_conv_relu(gm: fx.GraphModule) -> str | None:
    """Check that every int8 conv whose only user is a ReLU has taken that ReLU in; the first
    violation, or None."""
    for node in gm.graph.nodes:
        if _conv_without_relu(node) and isinstance(_relu_user(gm, node), fx.Node):
            return f"{node.name}: the ReLU after it is not fused"
    return None


FUSE_CONV_RELU = Pass(PASS, run_fuse_conv_relu, verify=verify_fuse_conv_relu)
