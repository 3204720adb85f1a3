"""Choose the regions: the largest submodules that capture cleanly and keep their meaning.

A Hugging Face model cannot be captured whole without losing what makes it that model (its KV
cache, keyword arguments, output dataclasses, ``generate``). So the user's module tree stays as the
shell, and the compiler works on *regions*: walking the tree from the top, a module that holds
weight matrices becomes a region when ``torch.fx.symbolic_trace`` captures it and the captured
graph computes what the module computes on the inputs it received in the example run; otherwise
its children are tried. At worst a region is one matmul layer (``nn.Linear``, GPT-2's ``Conv1D``).
A module none of whose parts capture stays float, and the record says why.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils import _pytree as pytree

from ..capture import CaptureError, symbolic_trace
from ..config import QuantConfig
from ..inputs import ModelInputs
from ..record import FloatModule
from .shell import holds_matrices, own_matrices

# Modules whose symbolic trace needs no check against a recorded call: their forward is a single
# functional op on their own weight.
_PLAIN_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)


@dataclass
class RegionPlan:
    """A chosen region: its module's qualified name, its captured GraphModule, and how it was
    captured."""

    name: str
    graph_module: fx.GraphModule
    capture: str


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == s or name.startswith(s + ".") for s in skip)


def _same(a: Any, b: Any) -> bool:
    la, sa = pytree.tree_flatten(a)
    lb, sb = pytree.tree_flatten(b)
    if sa != sb or len(la) != len(lb):
        return False
    for x, y in zip(la, lb, strict=True):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor):
            if x.shape != y.shape or x.dtype != y.dtype:
                return False
            if x.is_floating_point() and not torch.allclose(x, y, rtol=1e-5, atol=1e-6):
                return False
            if not x.is_floating_point() and not torch.equal(x, y):
                return False
    return True


def _check(gm: fx.GraphModule, module: nn.Module, calls: list[ModelInputs]) -> str | None:
    """Why the captured graph cannot stand in for ``module``, or None when it can."""
    for call in calls:
        try:
            with torch.no_grad():
                got = call.call(gm)
                want = call.call(module)
        except Exception as exc:
            return f"the captured graph fails on the example call: {type(exc).__name__}: {exc}"
        if not _same(got, want):
            return ("the captured graph computes something else than the module on the example "
                    "call (Python control flow that tracing fixed)")
    return None


def try_capture(
    module: nn.Module, calls: list[ModelInputs], config: QuantConfig
) -> tuple[fx.GraphModule | None, str]:
    """(graph, "") when ``module`` captures and checks out, else (None, the reason)."""
    if not calls and not isinstance(module, _PLAIN_LAYERS):
        return None, "not called on the example inputs, so its capture cannot be checked"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            gm = symbolic_trace(module, config)
    except CaptureError as exc:
        return None, str(exc)
    reason = _check(gm, module, calls)
    return (None, reason) if reason else (gm, "")


def plan_regions(
    root: nn.Module, calls: dict[str, list[ModelInputs]], config: QuantConfig
) -> tuple[list[RegionPlan], list[FloatModule]]:
    """The regions of ``root`` (never the root itself: it is the shell) and the modules left
    float, in module order."""
    regions: list[RegionPlan] = []
    floats: list[FloatModule] = []

    def visit(name: str, module: nn.Module, is_root: bool) -> None:
        if not holds_matrices(module):
            return
        if _skipped(name, config.skip):
            floats.append(FloatModule(name, type(module).__name__, "listed in QuantConfig.skip"))
            return
        reason = "the model itself is the shell"
        if not is_root:
            gm, reason = try_capture(module, calls.get(name, []), config)
            if gm is not None:
                regions.append(RegionPlan(name, gm, "symbolic_trace"))
                return
        if own_matrices(module):
            floats.append(FloatModule(
                name, type(module).__name__,
                f"holds weights {own_matrices(module)} but could not be captured: {reason}",
            ))
        for child_name, child in module.named_children():
            visit(f"{name}.{child_name}" if name else child_name, child, False)

    visit("", root, True)
    return regions, floats
