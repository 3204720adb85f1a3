"""Typed access to fx nodes for the passes: an argument that must be a node, the attribute path
a node reads, fxquant's record on a node (read only), and the calls to modules of given types
(found, or rewritten type by type).

``node.args[i]`` is typed as any fx ``Argument`` (constants, lists, slices, ...); a pass that
knows argument ``i`` is a graph value says so through :func:`node_arg`, which fails with the node
and argument named instead of an ``AttributeError`` deep in a rewrite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.fx as fx

from ..errors import PassError
from ..graph import fetch_attr


def node_arg(node: fx.Node, index: int) -> fx.Node:
    """``node.args[index]``, which must be a graph value (a ``Node``)."""
    arg = node.args[index] if len(node.args) > index else None
    if not isinstance(arg, fx.Node):
        raise PassError(f"{node.name} ({node.target}): argument {index} is {arg!r}, "
                        "not a value of the graph; this is an fxquant bug")
    return arg


def target_of(node: fx.Node) -> str:
    """The attribute path a ``get_attr`` / ``call_module`` node reads."""
    if not isinstance(node.target, str):
        raise PassError(f"{node.name} ({node.op}) reads no attribute; this is an fxquant bug")
    return node.target


def record(node: fx.Node) -> dict[str, Any]:
    """fxquant's record on ``node`` (empty when there is none); unlike ``graph.meta`` it never
    creates one, so checks can read it without changing the node."""
    return node.meta.get("fxquant", {})


def module_calls(gm: fx.GraphModule, types: type | tuple[type, ...]) -> list[fx.Node]:
    """The ``call_module`` nodes of ``gm`` whose module is one of ``types``."""
    return [n for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(fetch_attr(gm, target_of(n)), types)]


# Rewrites one call (the graph, the ``call_module`` node, its module) in place.
CallRewrite = Callable[[fx.GraphModule, fx.Node, Any], None]


def rewrite_module_calls(gm: fx.GraphModule,
                         rewrites: Sequence[tuple[type, CallRewrite]]) -> bool:
    """Call the first rewrite whose type the module is, for each ``call_module`` node of ``gm``
    (a rewrite may erase its node); returns whether any rewrite ran."""
    modified = False
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        module = fetch_attr(gm, target_of(node))
        rewrite = next((fn for cls, fn in rewrites if isinstance(module, cls)), None)
        if rewrite is not None:
            rewrite(gm, node, module)
            modified = True
    return modified


def left_over(gm: fx.GraphModule, types: type | tuple[type, ...], what: str) -> str | None:
    """A contract violation naming the first call to a module of ``types`` still in ``gm``."""
    calls = module_calls(gm, types)
    return f"{what} {calls[0].target} is still called" if calls else None
