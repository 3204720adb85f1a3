"""Rules that rewrite every spelling of a parameter matmul to the canonical functional op.

Used by the canonicalize pass. A graph from ``torch.fx.symbolic_trace`` spells a linear layer as
``F.linear``, ``torch.addmm`` or ``x @ W``; a graph from ``torch.export`` spells it
``aten.linear``, ``aten.addmm`` or ``aten.matmul``. Each rule matches one spelling, checks it
(returning the reason when it refuses) and rewrites it to ``F.linear(x, W, b)`` /
``F.conv1d|2d`` / ``F.embedding(ids, W)`` with the weight as a ``get_attr``. A weight stored
transposed (GPT-2's ``Conv1D`` keeps ``[in, out]`` and computes ``addmm(b, x, W)``) gets a
transposed view registered beside it, once, under ``<name>_t``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.node import Argument

from ..graph import fetch_attr
from .nodes import target_of

aten = torch.ops.aten


def _param(node: object) -> fx.Node | None:
    """``node`` if it is a get_attr of a tensor, else None."""
    return node if isinstance(node, fx.Node) and node.op == "get_attr" else None


def transposed_weight(gm: fx.GraphModule, weight: fx.Node) -> fx.Node:
    """A get_attr of ``weight``'s 2-D transpose, registered once beside the original."""
    target = f"{target_of(weight)}_t"
    owner_path, _, name = target.rpartition(".")
    owner = fetch_attr(gm, owner_path) if owner_path else gm
    if not hasattr(owner, name):
        # A view, not a copy: quantizing an LLM must not hold a second float copy of its
        # weights (lowering writes the int8 codes contiguous).
        tensor = fetch_attr(gm, target_of(weight)).detach().t()
        owner.register_parameter(name, nn.Parameter(tensor, requires_grad=False))
    with gm.graph.inserting_after(weight):
        return gm.graph.get_attr(target)


@dataclass(frozen=True)
class Rewrite:
    """Build the canonical call: (function, args)."""

    fn: Callable[..., Any]
    args: tuple[Argument, ...]


def _linear(gm: fx.GraphModule, node: fx.Node) -> Rewrite | str:
    x, w, *rest = node.args
    if _param(w) is None:
        return "weight is not a parameter"
    return Rewrite(F.linear, (x, w, rest[0] if rest else node.kwargs.get("bias")))


def _addmm(gm: fx.GraphModule, node: fx.Node) -> Rewrite | str:
    bias, x, w = node.args[:3]
    weight, bias_param = _param(w), _param(bias)
    if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
        return "addmm with beta/alpha other than 1"
    if weight is None or fetch_attr(gm, target_of(weight)).dim() != 2:
        return "mat2 is not a 2-D parameter"
    if bias is not None and bias_param is None:
        return "bias is computed in the graph"
    if bias_param is not None and fetch_attr(gm, target_of(bias_param)).dim() != 1:
        return "bias is not 1-D"
    return Rewrite(F.linear, (x, transposed_weight(gm, weight), bias))


def _matmul(gm: fx.GraphModule, node: fx.Node) -> Rewrite | str:
    x, w = node.args[:2]
    weight = _param(w)
    if weight is None or fetch_attr(gm, target_of(weight)).dim() != 2:
        return "right operand is not a 2-D parameter"
    if isinstance(x, fx.Node) and x.meta.get("val") is not None and x.meta["val"].dim() < 2:
        return "left operand is a vector"
    return Rewrite(F.linear, (x, transposed_weight(gm, weight), None))


def _embedding_aten(gm: fx.GraphModule, node: fx.Node) -> Rewrite | str:
    w, ids = node.args[:2]
    if _param(w) is None:
        return "table is not a parameter"
    return Rewrite(F.embedding, (ids, w))


def _conv(fn: Callable[..., object]) -> Callable[[fx.GraphModule, fx.Node], Rewrite | str]:
    def rule(gm: fx.GraphModule, node: fx.Node) -> Rewrite | str:
        if _param(node.args[1]) is None:
            return "weight is not a parameter"
        if node.kwargs:
            return "conv called with keyword arguments"
        return Rewrite(fn, tuple(node.args))

    return rule


RULES: dict[object, Callable[[fx.GraphModule, fx.Node], Rewrite | str]] = {
    aten.linear.default: _linear,
    aten.addmm.default: _addmm,
    torch.addmm: _addmm,
    aten.matmul.default: _matmul,
    aten.mm.default: _matmul,
    torch.matmul: _matmul,
    torch.mm: _matmul,
    operator.matmul: _matmul,
    aten.embedding.default: _embedding_aten,
    aten.conv1d.default: _conv(F.conv1d),
    aten.conv2d.default: _conv(F.conv2d),
    aten.conv1d.padding: _conv(F.conv1d),  # padding="same" / "valid"
    aten.conv2d.padding: _conv(F.conv2d),
}
