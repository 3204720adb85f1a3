"""Cleanup: drop what quantization left unused and check nothing of the float graph remains.

Requires: a fused graph.
Guarantees: no dead nodes; no observer module or call left (else ``PassError``); the GraphModule
holds only the modules and tensors its graph reads, so the float weights that were replaced by
int8 buffers are gone from ``state_dict()``.
Why: a leftover float copy of a weight would make the "int8" model as large as the original.
"""

from __future__ import annotations

import torch.fx as fx

from ..errors import PassError
from ..graph import fetch_attr
from ..observers import Observer, WeightObserver
from .infra import PassContext, PassResult


def run_cleanup(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    changed = gm.graph.eliminate_dead_code()
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(
            fetch_attr(gm, node.target), (Observer, WeightObserver)
        ):
            raise PassError(f"observer {node.target} survived lowering; this is an fxquant bug")
    # A new GraphModule copies only the attributes its graph reads: the dropped float weights,
    # observers and emptied modules do not come along.
    rebuilt = fx.GraphModule(gm, gm.graph, class_name=gm.__class__.__name__)
    rebuilt.meta.update(gm.meta)
    dropped = set(gm.state_dict()) - set(rebuilt.state_dict())
    return PassResult(rebuilt, changed or bool(dropped))
