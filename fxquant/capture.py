"""Capture: a float model becomes a GraphModule, on a copy, with clear errors.

The user's model is deep-copied first; tracing, evaluation mode and every later pass work on the
copy, so quantization never changes the model it is given.
"""

from __future__ import annotations

import inspect
import logging
import os
import traceback
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .config import QuantConfig
from .errors import AlreadyQuantizedError, CaptureError, ExampleInputError
from .inputs import ModelInputs, as_model_inputs, check_signature
from .module_tree import clear_hooks, share_copy

log = logging.getLogger("fxquant")
_TORCH_DIR = os.path.dirname(torch.__file__)
_FXQUANT_DIR = os.path.dirname(__file__)


def as_input_tuple(example_inputs: Any) -> tuple[Any, ...]:
    """Example inputs as a tuple: a lone tensor (or other value) becomes a 1-tuple."""
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def is_quantized(model: nn.Module) -> bool:
    """True for a model fxquant already prepared or converted (or that contains one)."""
    for m in model.modules():
        if getattr(m, "_fxquant_quantized", False):
            return True
        if isinstance(m, fx.GraphModule) and "fxquant" in getattr(m, "meta", {}):
            return True
    return False


class _Tracer(fx.Tracer):
    """A symbolic tracer that keeps user-chosen module classes as leaves and remembers which
    module it is inside, so a failure can name it."""

    def __init__(self, leaf_modules: tuple[type, ...] = ()) -> None:
        super().__init__()
        self.leaf_types = leaf_modules
        self.module_path_stack: list[str] = []

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        # Popped only on success: when tracing fails, the innermost module is still on top,
        # so the error can name it.
        self.module_path_stack.append(self.path_of_module(m))
        result = super().call_module(m, forward, args, kwargs)
        self.module_path_stack.pop()
        return result


def _user_frame(exc: BaseException) -> str:
    """'file:line in function' of the innermost frame in the user's code, not torch's."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames
            if not f.filename.startswith(_TORCH_DIR) and not f.filename.startswith(_FXQUANT_DIR)]
    if not mine:
        return "unknown location"
    f = mine[-1]
    return f"{f.filename}:{f.lineno} in {f.name}: {(f.line or '').strip()}"


def check_example_inputs(model: nn.Module, example_inputs: ModelInputs) -> None:
    """Refuse example inputs that cannot bind to ``model.forward`` or that the model rejects."""
    check_signature(model, example_inputs)
    try:
        with torch.no_grad():
            example_inputs.call(model)
    except Exception as exc:
        raise ExampleInputError(
            f"{type(model).__name__} failed on the example inputs {example_inputs.describe()}: "
            f"{type(exc).__name__}: {exc} (at {_user_frame(exc)}). Pass inputs the model accepts "
            "(right shapes, dtypes and device)."
        ) from None


def _trace_failure(model: nn.Module, tracer: _Tracer, exc: Exception) -> CaptureError:
    where = tracer.module_path_stack[-1] if tracer.module_path_stack else "the top-level module"
    return CaptureError(
        f"torch.fx could not trace {type(model).__name__}: it failed inside {where!r} "
        f"({_user_frame(exc)}): {type(exc).__name__}: {exc}. Add that module's class to "
        "QuantConfig.leaf_modules so it is kept as one opaque call, skip it, or rewrite the "
        "data-dependent Python control flow with torch ops."
    )


def symbolic_trace(model: nn.Module, config: QuantConfig) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` of ``model`` (not copied), with fxquant's errors."""
    tracer = _Tracer(config.leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        raise _trace_failure(model, tracer, exc) from None
    name = type(model).__name__
    gm = fx.GraphModule(tracer.root, graph, class_name=name)
    gm.meta["fxquant"] = {"capture": "symbolic_trace", "source_class": name, "stage": "captured"}
    return gm


def _dynamic_shapes(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    from torch.export import Dim

    return tuple(
        {d: Dim.AUTO for d in range(a.dim())} if isinstance(a, torch.Tensor) else None
        for a in inputs
    )


def _specialized_dims(gm: fx.GraphModule) -> list[str]:
    """Input dimensions torch.export fixed to the example's size."""
    fixed = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i, node in enumerate(placeholders):
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            fixed += [f"input {i} dim {d} = {s}" for d, s in enumerate(val.shape)
                      if isinstance(s, int) and s > 1 and d < 2]
    return fixed


def _widened(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """The example with batch and sequence dimensions (0 and 1) of size 1 repeated to 2.

    torch.export fixes a dimension whose example size is 0 or 1 (it cannot tell a broadcast from
    a batch), so a batch-1 example would give a model that only runs at batch 1.
    """
    def widen(a: Any) -> Any:
        if not isinstance(a, torch.Tensor):
            return a
        for d in range(min(a.dim(), 2)):
            if a.shape[d] == 1:
                a = torch.cat([a, a], dim=d)
        return a

    widened = tuple(widen(a) for a in inputs)
    same = all(w is a for w, a in zip(widened, inputs, strict=True))
    return inputs if same else widened


def _export(model: nn.Module, inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> fx.GraphModule:
    dynamic: tuple[Any, ...] | dict[str, Any] = _dynamic_shapes(inputs)
    if kwargs:
        dynamic = {**dict(zip(_arg_names(model, len(inputs)), dynamic, strict=True)),
                   **dict(zip(kwargs, _dynamic_shapes(tuple(kwargs.values())), strict=True))}
    return torch.export.export(
        model, inputs, kwargs or None, dynamic_shapes=dynamic, strict=False
    ).module()


def _arg_names(model: nn.Module, count: int) -> list[str]:
    return list(inspect.signature(model.forward).parameters)[:count]


def export_capture(model: nn.Module, inputs: ModelInputs) -> fx.GraphModule:
    """Capture with ``torch.export`` (non-strict), every tensor dimension dynamic where the model
    allows it, so the quantized model accepts other batch sizes and sequence lengths."""
    widened = _widened(inputs.args)
    gm = None
    if widened is not inputs.args:
        try:
            gm = _export(model, widened, inputs.kwargs)
            with torch.no_grad():
                inputs.call(gm)  # the widened capture must still take the user's own example
        except Exception:
            gm = None
    if gm is None:
        gm = _export(model, inputs.args, inputs.kwargs)
    name = type(model).__name__
    gm.meta["fxquant"] = {"capture": "torch.export", "source_class": name, "stage": "captured"}
    fixed = _specialized_dims(gm)
    if fixed:
        log.warning("fxquant: torch.export fixed %s of %s to the example's size", fixed, name)
    return gm


def _export_failure(model: nn.Module, exc: Exception) -> CaptureError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return CaptureError(
        f"torch.export could not capture {type(model).__name__}, at {_user_frame(exc)}: "
        f"{type(exc).__name__}: {first}. Use capture='auto' (region-wise fallback), add the "
        "module's class to QuantConfig.leaf_modules, or skip it."
    )


def _capture_graph(work: nn.Module, inputs: ModelInputs, config: QuantConfig) -> fx.GraphModule:
    if config.capture == "export":
        try:
            return export_capture(work, inputs)
        except Exception as exc:
            raise _export_failure(work, exc) from None
    try:
        return symbolic_trace(work, config)
    except CaptureError as trace_error:
        if config.capture == "symbolic_trace":
            raise
        log.info("fxquant: symbolic_trace failed (%s); capturing with torch.export", trace_error)
        try:
            return export_capture(work, inputs)
        except Exception as exc:
            raise CaptureError(f"{trace_error} {_export_failure(work, exc)}") from None


def check_model(model: Any) -> None:
    """Refuse what fxquant cannot quantize: non-modules and models it already quantized."""
    if not isinstance(model, nn.Module):
        raise CaptureError(f"expected a torch.nn.Module, got {type(model).__name__}.")
    if is_quantized(model):
        source = getattr(model, "meta", {}).get("fxquant", {}).get("source_class")
        what = f"{type(model).__name__} (from {source})" if source else type(model).__name__
        raise AlreadyQuantizedError(
            f"{what} was already quantized by fxquant; quantize the original float model "
            "instead."
        )


def capture(model: nn.Module, example_inputs: Any, config: QuantConfig) -> fx.GraphModule:
    """A GraphModule of a copy of ``model`` in eval mode, checked against ``example_inputs``.

    The copy shares the user's parameters (read, never written: see ``regions.shell``).
    ``gm.meta["fxquant"]["capture"]`` says which method captured it.
    """
    check_model(model)
    inputs = as_model_inputs(example_inputs)
    # Everything below runs on a copy in eval mode: even the trial run would update a training
    # model's BatchNorm statistics.
    work = share_copy(model).eval()
    clear_hooks(work)
    check_example_inputs(work, inputs)
    gm = _capture_graph(work, inputs, config)
    log.info("fxquant: captured %s with %s", type(model).__name__, gm.meta["fxquant"]["capture"])
    return gm
