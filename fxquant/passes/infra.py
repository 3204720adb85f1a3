"""Pass infrastructure: the pass contract, the context passes share, and the pass manager.

A pass is a :class:`Pass`: a function ``(GraphModule, PassContext) -> PassResult`` with its
contract as data -- the one name it goes by (timings, refusals, dump files), whether it rewrites
the module in place or returns a new one, and optionally ``verify(gm)``, which checks on the
module the pass returned what its docstring's "Guarantees" promise (it returns what is broken,
or None). ``modified`` is true only when the graph changed.

The manager lints and recompiles after every pass, records each pass's time, can dump the code
after every pass, and when a pass fails says which passes had already run. It always checks the
in-place claim (an identity test). In verify mode (``run_passes(..., verify=True)``, or the
environment variable ``FXQUANT_VERIFY=1``; the test suite turns it on) it also checks after each
pass that ``modified=False`` left the graph as it was, that refusals are filed under the pass's
own name, and runs the pass's ``verify``; a broken contract raises :class:`PassContractError`
naming the pass.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.fx as fx

from ..config import QuantConfig
from ..errors import FxQuantError, PassError

log = logging.getLogger("fxquant")


class PassContractError(PassError):
    """A pass broke its declared contract (in place or not, ``modified``, the name it files
    refusals under, or its ``verify``): a bug in that pass, not in the model. The message names
    the pass, what broke, and the passes that ran before it."""

VERIFY_ENV = "FXQUANT_VERIFY"


@dataclass(frozen=True)
class PassResult:
    """What a pass returns: the GraphModule (the one it was given, or a new one) and whether the
    graph changed."""

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
    # The model generates token by token (a causal LM): pack_weights prefers kernels tuned for
    # one-row calls where a choice trades decode against prefill speed.
    decode: bool = False

    def refuse(self, pass_name: str, node: fx.Node, reason: str) -> None:
        self.refusals.setdefault(pass_name, []).append((node.name, reason))
        log.debug("%s: left %s as it is: %s", pass_name, node.name, reason)


PassFn = Callable[[fx.GraphModule, PassContext], PassResult]
# What is broken in a module a pass returned, or None when the pass's guarantees hold.
Verifier = Callable[[fx.GraphModule], "str | None"]


@dataclass(frozen=True)
class Pass:
    """A pass and its contract.

    ``name``: the one name for its timings, refusals and dump files. ``in_place``: the pass
    rewrites the module it is given and returns it (False: it returns a new module, and the one
    it was given must not be used after it). ``verify``: see the module docstring.
    """

    name: str
    run: PassFn
    in_place: bool = True
    verify: Verifier | None = None

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        return self.run(gm, ctx)


def as_pass(p: Pass | PassFn) -> Pass:
    """``p`` itself, or a bare pass function as an in-place pass without ``verify``, named after
    the function (``run_`` dropped)."""
    if isinstance(p, Pass):
        return p
    return Pass(getattr(p, "__name__", type(p).__name__).removeprefix("run_"), p)


def verify_requested() -> bool:
    """Whether ``FXQUANT_VERIFY`` asks for contracts to be checked between passes."""
    return os.environ.get(VERIFY_ENV, "").strip().lower() not in ("", "0", "false", "no")


@dataclass(frozen=True)
class _Before:
    """What a contract check compares against: the graph and refusal counts before a pass."""

    graph: str
    refusals: dict[str, int]

    @staticmethod
    def take(gm: fx.GraphModule, ctx: PassContext) -> _Before:
        return _Before(str(gm.graph), {k: len(v) for k, v in ctx.refusals.items()})


def _broken(p: Pass, before: _Before, result: PassResult, ctx: PassContext) -> str | None:
    """What ``p`` broke of its contract (verify mode), or None."""
    if not result.modified and str(result.graph_module.graph) != before.graph:
        return "it returned modified=False but changed the graph"
    foreign = sorted(k for k, v in ctx.refusals.items()
                     if k != p.name and len(v) > before.refusals.get(k, 0))
    if foreign:
        return f"it filed refusals under {foreign}, not under its own name {p.name!r}"
    return p.verify(result.graph_module) if p.verify is not None else None


def _in_place_broken(p: Pass, gm: fx.GraphModule, result: PassResult) -> str | None:
    if p.in_place and result.graph_module is not gm:
        return "it is declared in place but returned a new module"
    if not p.in_place and result.graph_module is gm:
        return "it is declared to return a new module but returned the one it was given"
    return None


def _run_one(p: Pass, gm: fx.GraphModule, ctx: PassContext, done: list[str]) -> PassResult:
    try:
        result = p(gm, ctx)
        result.graph_module.graph.lint()
        if not ctx.replay:  # replay reads no code between passes: recompiled once, at the end
            result.graph_module.recompile()
    except FxQuantError:
        raise
    except Exception as exc:
        raise PassError(
            f"pass {p.name!r} failed (passes already run: {done or 'none'}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return result


def _dump(gm: fx.GraphModule, name: str, dump_dir: Path) -> None:
    dump_dir.mkdir(parents=True, exist_ok=True)
    index = len(list(dump_dir.glob("*.py")))
    (dump_dir / f"{index:02d}_{name}.py").write_text(gm.code)


def run_passes(
    gm: fx.GraphModule, passes: Sequence[Pass | PassFn], ctx: PassContext, *,
    verify: bool | None = None,
) -> fx.GraphModule:
    """Run ``passes`` in order over ``gm``; see the module docstring for what is checked.
    ``verify=None`` follows ``FXQUANT_VERIFY``."""
    check = verify_requested() if verify is None else verify
    done: list[str] = []
    for p in map(as_pass, passes):
        before = _Before.take(gm, ctx) if check else None
        start = time.perf_counter()
        result = _run_one(p, gm, ctx, done)
        ctx.timings[p.name] = time.perf_counter() - start
        log.debug("pass %s: %.1f ms, modified=%s", p.name, ctx.timings[p.name] * 1e3,
                  result.modified)
        broken = _in_place_broken(p, gm, result)
        if broken is None and before is not None:
            broken = _broken(p, before, result, ctx)
        if broken is not None:
            raise PassContractError(f"pass {p.name!r} broke its contract: {broken} "
                                    f"(passes already run: {done or 'none'})")
        gm = result.graph_module
        if ctx.dump_dir is not None:
            _dump(gm, p.name, ctx.dump_dir)
        done.append(p.name)
    if ctx.replay:
        gm.recompile()
    return gm
