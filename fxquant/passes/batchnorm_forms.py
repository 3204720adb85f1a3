"""The spellings of a BatchNorm in a captured graph, each read into one record.

Used by ``fold_batchnorm``:

    nn.BatchNorm1d / nn.BatchNorm2d module call                    (torch.fx.symbolic_trace)
    F.batch_norm(x, mean, var, weight, bias, training, momentum, eps)
    aten.batch_norm(x, weight, bias, mean, var, training, momentum, eps, cudnn_enabled)
    aten._native_batch_norm_legit_no_training(x, weight, bias, mean, var, momentum, eps)
        -> (y, _, _), read through getitem 0                        (torch.export)

A record carries the BatchNorm's tensors (read, never written) and, when it cannot be folded, the
reason (training mode, batch statistics, parameters computed in the graph).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import PassError
from ..graph import fetch_attr

aten = torch.ops.aten


@dataclass(frozen=True)
class BatchNorm:
    """One BatchNorm, whatever its spelling: its input, the node holding its output, the nodes to
    erase once that has no users, its tensors and ``eps``, and ``refusal``: why it cannot be folded,
    or None."""

    name: str
    input: object
    output: fx.Node  # the node whose value is the normalised tensor
    erase: tuple[fx.Node, ...]  # nodes that go once the output has no users, in this order
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    mean: torch.Tensor
    var: torch.Tensor
    eps: float
    refusal: str | None = None


_NO_STATS = "BatchNorm without running statistics (it normalises with batch statistics)"
_FUNCTIONAL = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum",
               "eps")
_ATEN = ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps")
_ATEN_NO_TRAINING = ("input", "weight", "bias", "running_mean", "running_var", "momentum", "eps")
_DEFAULTS = {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5}


def _bind(node: fx.Node, names: tuple[str, ...]) -> dict[str, object]:
    bound: dict[str, object] = dict(_DEFAULTS)
    bound.update(zip(names, node.args, strict=False))
    bound.update(node.kwargs)
    return bound


def _tensor(gm: fx.GraphModule, value: object) -> torch.Tensor | str | None:
    if value is None:
        return None
    if isinstance(value, fx.Node) and value.op == "get_attr":
        return fetch_attr(gm, str(value.target)).detach()
    return "BatchNorm parameters are computed in the graph"


def _from_args(gm: fx.GraphModule, node: fx.Node, args: dict[str, object], output: fx.Node,
               erase: tuple[fx.Node, ...]) -> BatchNorm:
    tensors = [_tensor(gm, args[k]) for k in ("weight", "bias", "running_mean", "running_var")]
    refusal = next((t for t in tensors if isinstance(t, str)), None)
    if args.get("training"):
        refusal = "BatchNorm in training mode"
    elif refusal is None and (tensors[2] is None or tensors[3] is None):
        refusal = _NO_STATS
    weight, bias, mean, var = (None if isinstance(t, str) else t for t in tensors)
    empty = torch.empty(0)
    eps = args["eps"]
    if not isinstance(eps, (int, float)):
        raise PassError(f"{node.name}: BatchNorm eps {eps!r} is not a constant")
    erase = (*erase, *[a for a in node.all_input_nodes if a.op == "get_attr"])
    return BatchNorm(node.name, args["input"], output, erase, weight, bias,
                     empty if mean is None else mean, empty if var is None else var, float(eps),
                     refusal)


def _module(gm: fx.GraphModule, node: fx.Node) -> BatchNorm | None:
    if node.op != "call_module":
        return None
    m = fetch_attr(gm, str(node.target))
    if type(m) not in (nn.BatchNorm1d, nn.BatchNorm2d):
        return None
    refusal = "BatchNorm in training mode" if m.training else None
    if refusal is None and (m.running_mean is None or m.running_var is None):
        refusal = _NO_STATS
    empty = torch.empty(0)
    return BatchNorm(
        str(node.target), node.args[0] if node.args else node.kwargs.get("input"), node, (node,),
        None if m.weight is None else m.weight.detach(),
        None if m.bias is None else m.bias.detach(),
        empty if m.running_mean is None else m.running_mean,
        empty if m.running_var is None else m.running_var, float(m.eps), refusal,
    )


def _functional(gm: fx.GraphModule, node: fx.Node) -> BatchNorm:
    return _from_args(gm, node, _bind(node, _FUNCTIONAL), node, (node,))


def _aten(gm: fx.GraphModule, node: fx.Node) -> BatchNorm:
    return _from_args(gm, node, _bind(node, _ATEN), node, (node,))


def _aten_no_training(gm: fx.GraphModule, node: fx.Node) -> BatchNorm | None:
    items = list(node.users)
    outputs = [u for u in items if u.target is operator.getitem and u.args[1] == 0]
    if not outputs:
        return None
    bn = _from_args(gm, node, _bind(node, _ATEN_NO_TRAINING), outputs[0], (*items, node))
    if any(u.target is not operator.getitem for u in items) or any(
        u.users for u in items if u.args[1] != 0
    ):
        return dataclasses.replace(bn, refusal="BatchNorm's saved statistics are used")
    return bn


_READERS: dict[object, Callable[[fx.GraphModule, fx.Node], BatchNorm | None]] = {
    F.batch_norm: _functional,
    aten.batch_norm.default: _aten,
    aten._native_batch_norm_legit_no_training.default: _aten_no_training,
}


def read_batchnorm(gm: fx.GraphModule, node: fx.Node) -> BatchNorm | None:
    """``node`` as a BatchNorm record, or None when it is not one."""
    if node.op == "call_module":
        return _module(gm, node)
    if node.op == "call_function" and node.target in _READERS:
        return _READERS[node.target](gm, node)
    return None
