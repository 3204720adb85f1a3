"""Make a ``torch.export``-captured GraphModule's sizes visible to the TorchScript tracer.

Requires: a converted GraphModule; only graphs with ``aten.sym_size.int`` nodes are changed.
Guarantees: inside the ``traceable_sizes`` block, every ``aten.sym_size.int(x, d)`` is
``x.size(d)`` and every aten op that receives such a size (directly, in a list, or through
Python arithmetic on sizes) is called through its Python binding (``Tensor.view``,
``torch.arange``, ...); the original graph is restored when the block exits, even on error.
Why: ``torch.export`` graphs compute sizes with ``aten.sym_size.int``, which returns a plain
Python int when the graph runs, so the tracer would bake the example's batch and sequence length
into every reshape. ``x.size(d)`` is recorded as a graph value instead, but only the Python
bindings accept it (``aten.arange.default`` rejects the 0-d tensor the tracer hands it).
"""

from __future__ import annotations

import contextlib
import copy
import operator
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import ExportError

_SYM_SIZE = torch.ops.aten.sym_size.int
_ARITHMETIC = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.floordiv,
    operator.neg,
    operator.truediv,
    operator.mod,
}
# Ops whose size arguments are computed in the graph but which are only guards at run time.
_DROPPABLE = {
    torch.ops.aten._assert_scalar.default,
    torch.ops.aten.sym_constrain_range_for_size.default,
}


def _uses(value: Any, sizes: set[fx.Node]) -> bool:
    found = False

    def visit(arg: Any) -> Any:
        nonlocal found
        found = found or (isinstance(arg, fx.Node) and arg in sizes)
        return arg

    fx.node.map_aggregate(value, visit)
    return found


def _slice(
    x: torch.Tensor, dim: int = 0, start: Any = None, end: Any = None, step: int = 1
) -> torch.Tensor:
    """``aten.slice.Tensor`` through indexing, which accepts traced sizes as bounds."""
    index = [slice(None)] * (dim % x.dim()) + [slice(start, end, step)]
    return x[tuple(index)]


_BINDINGS: dict[Any, Any] = {torch.ops.aten.slice.Tensor: _slice}


def _python_binding(node: fx.Node) -> Any:
    """``Tensor.<name>`` (first argument a tensor) or ``torch.<name>`` for an aten overload."""
    if node.target in _BINDINGS:
        return _BINDINGS[node.target]
    name = node.target.overloadpacket.__name__  # type: ignore[union-attr]
    first = node.args[0] if node.args else None
    if isinstance(first, fx.Node) and hasattr(torch.Tensor, name):
        return getattr(torch.Tensor, name)
    if hasattr(torch, name):
        return getattr(torch, name)
    raise ExportError(
        f"cannot keep sizes dynamic through {node.target} (no Python binding); export with "
        "dynamic_batch=False, or capture the model with torch.fx symbolic tracing."
    )


def _rewrite(graph: fx.Graph) -> bool:
    sizes: set[fx.Node] = set()
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is _SYM_SIZE:
            node.op, node.target = "call_method", "size"
            sizes.add(node)
            changed = True
        elif node.target in _ARITHMETIC and _uses(node.args, sizes):
            sizes.add(node)
        elif node.target in _DROPPABLE and _uses(node.args, sizes) and not node.users:
            graph.erase_node(node)
        elif isinstance(node.target, torch._ops.OpOverload) and _uses(
            (node.args, node.kwargs), sizes
        ):
            node.target = _python_binding(node)
    return changed


@contextlib.contextmanager
def traceable_sizes(model: nn.Module) -> Iterator[None]:
    """Within the block, the converted GraphModules in ``model`` trace with dynamic sizes."""
    swapped: list[tuple[fx.GraphModule, fx.Graph]] = []
    try:
        for module in model.modules():
            if isinstance(module, fx.GraphModule) and any(
                n.target is _SYM_SIZE for n in module.graph.nodes
            ):
                original = module.graph
                graph = copy.deepcopy(original)
                if _rewrite(graph):
                    module.graph = graph  # recompiles
                    swapped.append((module, original))
        yield
    finally:
        for module, original in reversed(swapped):
            module.graph = original
