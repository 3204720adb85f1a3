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
from ..observers import Observer, WeightObserver
from .infra import Pass, PassContext, PassResult
from .nodes import left_over, module_calls, target_of


def run_cleanup(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Run the pass; see the module docstring for what it requires and guarantees."""
    changed = gm.graph.eliminate_dead_code()
    stray = module_calls(gm, (Observer, WeightObserver))
    if stray:
        raise PassError(f"observer {stray[0].target} survived lowering; this is an fxquant bug")
    # A new GraphModule copies only the attributes its graph reads: the dropped float weights,
    # observers and emptied modules do not come along.
    rebuilt = fx.GraphModule(gm, gm.graph, class_name=gm.__class__.__name__)
    rebuilt.meta.update(gm.meta)
    dropped = set(gm.state_dict()) - set(rebuilt.state_dict())
    return PassResult(rebuilt, changed or bool(dropped))


def _unread_state(gm: fx.GraphModule) -> list[str]:
    """``state_dict()`` keys that no ``get_attr`` / ``call_module`` of the graph reads."""
    read = [target_of(n) for n in gm.graph.nodes if n.op in ("get_attr", "call_module")]
    return [k for k in gm.state_dict() if not any(k == t or k.startswith(t + ".") for t in read)]


def verify_cleanup(gm: fx.GraphModule) -> str | None:
    """Check that no dead node, no tensor the graph does not read and no observer call remains; the
    first violation, or None."""
    dead = [n.name for n in gm.graph.nodes
            if n.op not in ("placeholder", "output") and not n.users and not n.is_impure()]
    if dead:
        return f"dead nodes remain: {dead[:5]}"
    unread = _unread_state(gm)
    if unread:
        return f"the module holds tensors its graph does not read: {unread[:5]}"
    return left_over(gm, (Observer, WeightObserver), "observer")


CLEANUP = Pass("cleanup", run_cleanup, in_place=False, verify=verify_cleanup)
