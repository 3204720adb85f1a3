"""Drop the flatten / unflatten around packed linears whose kernel takes any leading dims.

Requires: a runtime GraphModule (``pack_weights`` has run).
Guarantees: ``x.view(-1, K) -> kernel -> .view(x.size()[:-1] + (N,))`` becomes ``kernel(x)`` for
the kernels that flatten leading dimensions themselves (fbgemm's ``linear_dynamic`` and fxquant's
weight-only kernel), bit-identical (the dynamic range is taken over the same elements). The
``size`` / ``getitem`` / ``add`` nodes that only fed the views go with them.
Why: Hugging Face's ``Conv1D`` (every GPT-2 matmul) is written that way; at one token the five
extra graph nodes per layer cost ~6 us each in Python, ~0.3 ms of a GPT-2 small decode step.
"""

from __future__ import annotations

import operator

import torch.fx as fx

from ..kernels import fbgemm
from .infra import Pass, PassContext, PassResult
from .runtime_calls import (
    linear_dynamic_per_token_packed,
    linear_dynamic_per_token_vnni,
    linear_dynamic_vnni,
    linear_weight_only_blocked,
    linear_weight_only_packed,
)

# Runtime calls that accept ``x`` of any rank and return ``[*x.shape[:-1], N]``.
_ND_KERNELS = (fbgemm.LINEAR_DYNAMIC, linear_dynamic_per_token_packed, linear_weight_only_packed,
               linear_weight_only_blocked, linear_dynamic_vnni, linear_dynamic_per_token_vnni)


def _is_size_of(node: object, x: fx.Node, *args: object) -> bool:
    return (isinstance(node, fx.Node) and node.op == "call_method" and node.target == "size"
            and node.args == (x, *args))


def _flattened_input(view: object) -> fx.Node | None:
    """``x`` when ``view`` is ``x.view(-1, x.size(-1))``."""
    if not (isinstance(view, fx.Node) and view.op == "call_method" and view.target == "view"
            and len(view.args) == 3 and view.args[1] == -1 and len(view.users) == 1):
        return None
    x = view.args[0]
    if isinstance(x, fx.Node) and _is_size_of(view.args[2], x, -1):
        return x
    return None


def _restores_leading_dims(view: fx.Node, x: fx.Node) -> bool:
    """``view`` is ``y.view(x.size()[:-1] + (N,))``."""
    if not (view.op == "call_method" and view.target == "view" and len(view.args) == 2):
        return False
    shape = view.args[1]
    if not (isinstance(shape, fx.Node) and shape.target is operator.add
            and isinstance(shape.args[1], tuple) and len(shape.args[1]) == 1):
        return False
    lead = shape.args[0]
    return (isinstance(lead, fx.Node) and lead.target is operator.getitem
            and lead.args[1] == slice(None, -1, None) and _is_size_of(lead.args[0], x))


def _reshaped_calls(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node, fx.Node]]:
    """(call, flatten view, unflatten view) for every kernel call the pass rewrites."""
    found = []
    for call in gm.graph.nodes:
        if call.op != "call_function" or call.target not in _ND_KERNELS:
            continue
        x = _flattened_input(call.args[0])
        users = list(call.users)
        if x is not None and len(users) == 1 and _restores_leading_dims(users[0], x):
            found.append((call, call.args[0], users[0]))
    return found


def run_drop_linear_reshapes(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Run the pass; see the module docstring for what it requires and guarantees."""
    changed = False
    for call, flat, unflat in _reshaped_calls(gm):
        # flat.args[0] is read now, not when the call was found: an earlier rewrite may have
        # replaced that node (two Conv1D layers in a row: the first one's unflatten view is the
        # second one's x).
        call.args = (flat.args[0], *call.args[1:])
        unflat.replace_all_uses_with(call)
        gm.graph.erase_node(unflat)
        gm.graph.erase_node(flat)
        changed = True
    if changed:
        gm.graph.eliminate_dead_code()
    return PassResult(gm, changed)


def verify_drop_linear_reshapes(gm: fx.GraphModule) -> str | None:
    """Check that no kernel call this pass rewrites is still wrapped in flatten / unflatten views;
    the first violation, or None."""
    left = _reshaped_calls(gm)
    return f"flatten / unflatten views remain around {left[0][0].name}" if left else None


DROP_LINEAR_RESHAPES = Pass("drop_linear_reshapes", run_drop_linear_reshapes,
                            verify=verify_drop_linear_reshapes)
