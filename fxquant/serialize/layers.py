"""Which layer each int8 tensor belongs to, read off the graphs (for error messages).

The ``fxq`` buffers are named ``<source>_<role>``, but names are never parsed back: the nodes
that read a buffer carry ``meta["fxquant"]["source"]``, the layer they came from.
"""

from __future__ import annotations

import torch.fx as fx
from torch import nn

from ..record import QuantRecord
from .replay import region_graphs


def _layer(region: str, source: str) -> str:
    if source in ("", "weight", "weight_t"):  # a region that is one layer
        return region or "(model)"
    return f"{region}.{source}" if region else source


def tensor_layers(model: nn.Module, record: QuantRecord) -> dict[str, str]:
    """``state_dict()`` key -> layer name, for every tensor a quantized op reads."""
    out: dict[str, str] = {}
    for region, gm in region_graphs(model, record):
        prefix = f"{region}." if region else ""
        for node in gm.graph.nodes:
            source = node.meta.get("fxquant", {}).get("source")
            if node.op != "call_function" or source is None:
                continue
            for arg in node.all_input_nodes:
                if isinstance(arg, fx.Node) and arg.op == "get_attr":
                    out.setdefault(prefix + str(arg.target), _layer(region, source))
    return out
