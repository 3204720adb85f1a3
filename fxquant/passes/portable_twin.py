"""The portable twin of a packed runtime graph: every packed call back to its fxquant op.

``portable(gm)`` rebuilds the fxquant-op graph on int8 buffers (the codes unpacked, bit-exact) for
what reads graphs rather than runs them: ONNX export, ``torch.export``, ``torch.compile`` and the
reference kernels. ``portable_model`` does it for every packed region of a shell.
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx

from .. import ops
from ..graph import fetch_attr, meta
from .pack_weights import PACKED_META, PackedLinear, entries_of, is_packed, unpack


def _fxquant_call(graph: fx.Graph, node: fx.Node, entry: PackedLinear) -> fx.Node:
    """The fxquant op on int8 buffers that the packed call ``node`` stands for."""
    w = [graph.get_attr(t) if t else None
         for t in (entry.codes, entry.scale, entry.zero_point, entry.bias)]
    if entry.op == "embedding":
        return graph.call_function(ops.embedding, (node.args[0], *w[:3]))
    if entry.op == "linear_weight_only":
        return graph.call_function(ops.linear_weight_only, (node.args[0], *w))
    if entry.op == "linear_dynamic":
        x, _, rr = node.args
        return graph.call_function(ops.linear_dynamic, (x, *w, rr))
    if entry.op == "linear_dynamic_per_token":
        x, _, rr = node.args[:3]  # fbgemm's form also passes the bias, the VNNI one does not
        return graph.call_function(ops.linear_dynamic_per_token, (x, *w, rr))
    x, x_scale, x_zp, _ = node.args
    return graph.call_function(ops.linear_static, (x, x_scale, x_zp, False, *w))


def portable(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` with every packed call turned back into its fxquant op on int8 buffers."""
    entries = entries_of(gm)
    twin = copy.deepcopy(gm)
    if not entries:
        return twin
    twin._state_dict_hooks.clear()
    twin._load_state_dict_pre_hooks.clear()
    for node in list(twin.graph.nodes):
        name = meta(node).get("packed") if node.op == "call_function" else None
        if name is None:
            continue
        entry = entries[name]
        if not entry.kept_codes:
            owner_name, _, buffer = entry.codes.rpartition(".")
            owner = fetch_attr(twin, owner_name) if owner_name else twin
            owner.register_buffer(buffer, unpack(entry, getattr(twin, name)))
        with twin.graph.inserting_before(node):
            new = _fxquant_call(twin.graph, node, entry)
        # A graph copy shares node.meta's inner dicts with the original: build new ones.
        info = {k: v for k, v in meta(node).items() if k not in ("packed", "fused")}
        new.meta.update({**node.meta, "fxquant": {**info, "kernel": "fxquant op (portable)"}})
        if meta(node).get("fused") == "relu":  # fuse_linear_relu folded it into the kernel
            with twin.graph.inserting_after(new):
                new = twin.graph.call_function(torch.relu, (new,))
        node.replace_all_uses_with(new)
        twin.graph.erase_node(node)
    twin.graph.eliminate_dead_code()
    for name in entries:
        delattr(twin, name)
    twin.meta["fxquant"] = {k: v for k, v in twin.meta["fxquant"].items() if k != PACKED_META}
    twin.recompile()
    return twin


def portable_model(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` (a converted GraphModule, or a shell holding converted regions) in
    which every packed region is its portable fxquant-op twin."""
    if isinstance(model, fx.GraphModule):
        return portable(model)
    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        if name and isinstance(module, fx.GraphModule) and is_packed(module):
            parent_name, _, child = name.rpartition(".")
            parent = twin.get_submodule(parent_name) if parent_name else twin
            setattr(parent, child, portable(module))
    return twin


