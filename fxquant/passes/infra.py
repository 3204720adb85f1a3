"""Pass infrastructure: the pass contract, the context passes share, and the pass manager.

A pass is a function ``(GraphModule, PassContext) -> PassResult``. ``modified`` is true only when
the graph changed. The manager lints and recompiles after every pass, records each pass's time,
can dump the code after every pass, and when a pass fails says which passes had already run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.fx as fx

from ..config import QuantConfig
from ..errors import FxQuantError, PassError

log = logging.getLogger("fxquant")


@dataclass(frozen=True)
class PassResult:
    graph_module: fx.GraphModule
    modified: bool


@dataclass
class PassContext:
    """What passes share: the config, calibration data, and a record of what happened."""

    config: QuantConfig
    calibration: Iterable[Any] | None = None
    example_inputs: tuple[Any, ...] = ()
    progress: bool = False
    dump_dir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # Why a candidate node was not rewritten, by pass: [(node name, reason), ...].
    refusals: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    # Kinds of op ("linear", "embedding", ...) that read a weight (by get_attr target) in *other*
    # regions of the same model: a tied weight gets the scheme that suits all its users.
    weight_kinds: dict[str, set[str]] = field(default_factory=dict)
    # Tensors (by id) that other modules of the same model also hold: a tied int8 table must stay
    # a buffer when its matmul packs a copy for the fast kernel.
    shared_tensors: set[int] = field(default_factory=set)
    # Structural replay (``fxquant.load``): the weights are on the meta device and the int8
    # tensors will be loaded from a file, so passes build the same graph and buffers (by shape)
    # but skip work that reads values (finite checks, packing). Calibration never runs in replay,
    # and run_passes recompiles the code once after the last pass, not after each.
    replay: bool = False

    def refuse(self, pass_name: str, node: fx.Node, reason: str) -> None:
        self.refusals.setdefault(pass_name, []).append((node.name, reason))
        log.debug("%s: left %s as it is: %s", pass_name, node.name, reason)


Pass = Callable[[fx.GraphModule, PassContext], PassResult]


def pass_name(p: Pass) -> str:
    return getattr(p, "__name__", type(p).__name__).removeprefix("run_")


def run_passes(gm: fx.GraphModule, passes: Sequence[Pass], ctx: PassContext) -> fx.GraphModule:
    """Run ``passes`` in order over ``gm``; see the module docstring for what is checked."""
    done: list[str] = []
    for p in passes:
        name = pass_name(p)
        start = time.perf_counter()
        try:
            result = p(gm, ctx)
            gm = result.graph_module
            gm.graph.lint()
            if not ctx.replay:  # replay reads no code between passes: recompiled once, below
                gm.recompile()
        except FxQuantError:
            raise
        except Exception as exc:
            raise PassError(
                f"pass {name!r} failed (passes already run: {done or 'none'}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        ctx.timings[name] = time.perf_counter() - start
        log.debug("pass %s: %.1f ms, modified=%s", name, ctx.timings[name] * 1e3, result.modified)
        if ctx.dump_dir is not None:
            ctx.dump_dir.mkdir(parents=True, exist_ok=True)
            index = len(list(ctx.dump_dir.glob("*.py")))
            (ctx.dump_dir / f"{index:02d}_{name}.py").write_text(gm.code)
        done.append(name)
    if ctx.replay:
        gm.recompile()
    return gm
