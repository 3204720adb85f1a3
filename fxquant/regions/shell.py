"""The shell: a copy of the user's module tree that shares (reads, never writes) its weights.

Quantizing an LLM must not deep-copy its float weights: that alone doubled peak memory. The shell
copies every module object and buffer but *shares* the user's ``nn.Parameter`` objects; passes
read them to compute int8 codes and never write them. Whatever float parameter is still shared when
conversion ends (LayerNorms, a skipped layer) is cloned then (``unshare``), so the returned model
and the user's model never alias.

``share_copy``, ``clear_hooks`` and ``set_submodule`` live in ``fxquant/module_tree.py`` (capture,
passes and qat use them too, below ``regions/``); they are imported here for the shell's users.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..inputs import ModelInputs
from ..module_tree import clear_hooks, set_submodule, share_copy

__all__ = ["clear_hooks", "holds_matrices", "own_matrices", "record_calls", "set_submodule",
           "share_copy", "storages", "unshare"]

def storages(model: nn.Module) -> set[int]:
    """The storages of ``model``'s parameters (to tell later what still aliases them)."""
    return {p.untyped_storage().data_ptr() for p in model.parameters() if p.device.type != "meta"}


def unshare(model: nn.Module, user_storages: set[int]) -> int:
    """Clone every parameter or buffer of ``model`` that still aliases the user's weights (a float
    leftover, a bias moved into ``fxq`` as a detached view). Tensors that were one object stay one.

    Returns how many tensors were cloned.
    """
    clones: dict[int, torch.Tensor] = {}

    def own(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in clones:
            data = t.detach().clone()
            clones[id(t)] = nn.Parameter(data, requires_grad=t.requires_grad) if isinstance(
                t, nn.Parameter) else data
        return clones[id(t)]

    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, t in list(table.items()):
                if t is not None and t.device.type != "meta" and (
                        t.untyped_storage().data_ptr() in user_storages):
                    table[name] = own(t)  # type: ignore[assignment]
    return len(clones)


def record_calls(model: nn.Module, inputs: ModelInputs, max_calls: int = 2) -> tuple[
        Any, dict[str, list[ModelInputs]]]:
    """Run ``model`` once on ``inputs``; returns its output and, for every submodule that holds
    weight matrices, the arguments of its first ``max_calls`` calls (used to check captures)."""
    calls: dict[str, list[ModelInputs]] = {}
    handles = []

    def hook(name: str):
        def record(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            seen = calls.setdefault(name, [])
            if len(seen) < max_calls:
                seen.append(ModelInputs(tuple(args), dict(kwargs)))
        return record

    for name, module in model.named_modules():
        if holds_matrices(module):
            handles.append(module.register_forward_pre_hook(hook(name), with_kwargs=True))
    try:
        with torch.no_grad():
            output = inputs.call(model)
    finally:
        for h in handles:
            h.remove()
    return output, calls


def _is_matrix(name: str, p: torch.Tensor) -> bool:
    # A matmul or conv weight: 2-D, or a named weight of more dimensions. Other N-D parameters
    # (ViT's cls_token and position embeddings) are added, not multiplied: nothing to quantize.
    return p.is_floating_point() and (p.dim() == 2 or (p.dim() > 2 and "weight" in name))


def holds_matrices(module: nn.Module) -> bool:
    """Whether ``module`` or anything below it holds a weight matrix (see ``_is_matrix``)."""
    return any(_is_matrix(n.rpartition(".")[2], p) for n, p in module.named_parameters())


def own_matrices(module: nn.Module) -> list[str]:
    """Names of the weight matrices ``module`` holds itself (not through a child)."""
    return [n for n, p in module.named_parameters(recurse=False) if _is_matrix(n, p)]
