"""Helpers every pass shares: where quantization state lives, naming, and node bookkeeping.

Everything a pass adds to a GraphModule lives under one submodule, ``fxq``, and is named
``<source>_<role>`` with a fixed set of roles, so ``state_dict()`` keys show at a glance what
quantization added. Where a node came from is recorded in ``node.meta["fxquant"]``, never parsed
back out of a name.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

CONTAINER = "fxq"
ROLES = ("w_int8", "w_scale", "w_zp", "bias", "act_obs", "w_obs",
         # group-wise codes (4 bits or fewer: two per byte; 5..8: one unsigned byte); 1/s of an
         # input scaled by SmoothQuant or AWQ;
         # the input-statistics observer those passes and GPTQ read (fxquant/algorithms)
         "w_int4", "w_uint8", "smooth", "in_stats")

# The canonical quantizable ops, after canonicalisation: weight is always argument 1.
LINEAR_FNS = (F.linear,)
CONV_FNS = (F.conv1d, F.conv2d)
EMBEDDING_FNS = (F.embedding,)


def kind_of(node: fx.Node) -> str | None:
    """'linear', 'conv' or 'embedding' for a canonical quantizable node, else None."""
    if node.op != "call_function":
        return None
    if node.target in LINEAR_FNS:
        return "linear"
    if node.target in CONV_FNS:
        return "conv"
    if node.target in EMBEDDING_FNS:
        return "embedding"
    return None


def meta(node: fx.Node) -> dict[str, Any]:
    """fxquant's record on a node (created on first use)."""
    return node.meta.setdefault("fxquant", {})


def container(gm: fx.GraphModule) -> nn.Module:
    """The ``fxq`` submodule that holds everything quantization adds."""
    if not hasattr(gm, CONTAINER):
        gm.add_submodule(CONTAINER, nn.Module())
    return getattr(gm, CONTAINER)


def _sanitize(source: str) -> str:
    return re.sub(r"[^0-9a-zA-Z_]", "_", source).strip("_") or "model"


def unique_name(gm: fx.GraphModule, source: str, role: str) -> str:
    """A fresh attribute name ``<source>_<role>`` inside ``fxq`` (suffixed if taken)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {ROLES}")
    box = container(gm)
    base = f"{_sanitize(source)}_{role}"
    name, i = base, 1
    while hasattr(box, name):
        name, i = f"{base}_{i}", i + 1
    return name


def add_buffer(gm: fx.GraphModule, source: str, role: str, tensor: torch.Tensor) -> str:
    """Register ``tensor`` as a buffer in ``fxq``; returns its qualified target for get_attr."""
    name = unique_name(gm, source, role)
    container(gm).register_buffer(name, tensor)
    return f"{CONTAINER}.{name}"


def add_module(gm: fx.GraphModule, source: str, role: str, module: nn.Module) -> str:
    """Register ``module`` in ``fxq``; returns its qualified target for call_module."""
    name = unique_name(gm, source, role)
    container(gm).add_module(name, module)
    return f"{CONTAINER}.{name}"


def fetch_attr(gm: torch.nn.Module, target: str) -> Any:
    """The object a dotted ``target`` (of a get_attr or call_module) names under ``gm``."""
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def source_of_weight(weight_target: str) -> str:
    """The layer a weight belongs to: ``encoder.fc1.weight`` -> ``encoder.fc1``."""
    for suffix in (".weight_t", ".weight"):
        if weight_target.endswith(suffix):
            return weight_target.removesuffix(suffix)
    return weight_target
