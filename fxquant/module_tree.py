"""Surgery on a module tree, below every part that rewrites one (capture, passes, qat, regions).

``share_copy`` copies a model's module objects and buffers but shares its ``nn.Parameter``
objects (quantizing must not hold a second float copy of an LLM); ``clear_hooks`` empties a
copy's hook tables (the copy shares the user's hook functions); ``set_submodule`` replaces the
module at a dotted name. ``regions/shell.py`` builds the region-by-region shell on these.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def share_copy(model: ModuleT) -> ModuleT:
    """A deep copy of ``model`` whose parameters are the user's own objects (not copied)."""
    memo: dict[int, Any] = {id(p): p for _, p in model.named_parameters(remove_duplicate=False)}
    return copy.deepcopy(model, memo)


def clear_hooks(model: nn.Module) -> None:
    """The copy shares the user's hook functions; they must not fire during capture (side effects
    on the user's state), and the quantized model does not run them."""
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks):
            hooks.clear()


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``name`` below ``root`` (its parent must exist)."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
