"""Refuse bad export requests early, before any work, with messages that say what to do."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils import _pytree as pytree

from ..capture import as_input_tuple
from ..config import QuantConfig
from ..errors import ExampleInputError, ExportError, FxQuantError
from ..record import stage_of
from .versions import check_opset


@dataclass(frozen=True)
class Subject:
    """What is being exported: the model, its fxquant record (if any) and where it sits."""

    model: nn.Module
    config: QuantConfig | None  # None: a float model fxquant did not convert
    record: dict[str, Any]
    converted: tuple[tuple[str, fx.GraphModule], ...]  # (qualified name, converted module)


def inspect_model(model: Any) -> Subject:
    """Classify ``model``; a prepared (observed) model is an error, a float one a warning."""
    if not isinstance(model, nn.Module):
        raise ExportError(f"export_onnx expects a torch.nn.Module, got {type(model).__name__}.")
    converted = []
    for name, module in model.named_modules():
        # GraphModules only: a shell quantized region by region holds converted regions.
        stage = stage_of(module) if isinstance(module, fx.GraphModule) else None
        if stage == "converted":
            converted.append((name, module))
        elif stage is not None:
            raise FxQuantError(
                f"{type(model).__name__}{' ' + repr(name) if name else ''} is at stage {stage!r}: "
                "it still holds observers. Call fxquant.convert(...) (or fxquant.quantize) and "
                "export the converted model."
            )
    if not converted:
        warnings.warn(
            f"{type(model).__name__} was not converted by fxquant; exporting it as a float32 "
            "model (no int8 weights). Quantize it with fxquant.quantize(...) first to get an int8 "
            "file.",
            stacklevel=3,
        )
        return Subject(model, None, {}, ())
    record = converted[0][1].meta["fxquant"]
    return Subject(model, record["config"], record, tuple(converted))


def _shapes(values: tuple[Any, ...]) -> list[Any]:
    return [tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for v in values]


@dataclass(frozen=True)
class Outputs:
    """The model's outputs on the example inputs: one name per tensor leaf."""

    names: tuple[str, ...]
    flat: bool  # a tensor or a flat tuple/list of tensors (no wrapper needed to export it)


def _leaf_name(path: tuple[Any, ...]) -> str:
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    if not parts:
        return "output"
    name = "_".join(parts)
    return f"output_{name}" if all(p.isdigit() for p in parts) else name


def describe_outputs(outputs: Any, model_name: str) -> Outputs:
    """Name every tensor in ``outputs`` (a tensor, tuple, list, dict or Hugging Face
    ``ModelOutput``) after its place in the structure: ``output``, ``output_0``,
    ``last_hidden_state``..."""
    leaves = pytree.tree_flatten_with_path(outputs)[0]
    if not leaves or not all(isinstance(v, torch.Tensor) for _, v in leaves):
        raise ExportError(
            f"{model_name} returns {type(outputs).__name__} holding non-tensors; the export "
            "needs tensors (alone or in tuples, lists, dicts or ModelOutputs)."
        )
    flat = isinstance(outputs, torch.Tensor) or (
        isinstance(outputs, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in outputs)
    )
    return Outputs(tuple(_leaf_name(path) for path, _ in leaves), flat)


def run_example(
    subject: Subject, example_inputs: Any
) -> tuple[tuple[torch.Tensor, ...], Outputs]:
    """The inputs as a tuple of tensors, and the model's outputs for them (run once, checked:
    errors say what the model accepts)."""
    inputs = as_input_tuple(example_inputs)
    if not inputs:
        raise ExampleInputError("example_inputs is empty: pass one tensor per model input.")
    if not all(isinstance(v, torch.Tensor) for v in inputs):
        raise ExampleInputError(
            f"example_inputs must be tensors (one per positional input); got {_shapes(inputs)}."
        )
    try:
        with torch.no_grad():
            outputs = subject.model(*inputs)
    except Exception as exc:
        raise ExampleInputError(
            f"{type(subject.model).__name__} failed on the example inputs {_shapes(inputs)}: "
            f"{type(exc).__name__}: {exc}. Pass inputs the model accepts (shapes, dtypes, count)."
        ) from None
    return inputs, describe_outputs(outputs, type(subject.model).__name__)


def check_path(path: str | os.PathLike[str]) -> Path:
    """An output path whose folder exists and is writable (checked before any work)."""
    target = Path(path)
    if target.is_dir():
        raise ExportError(f"{target} is a directory; pass a file path such as {target}/model.onnx.")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise ExportError(f"cannot write {target}: the folder {folder} does not exist.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {target}: the folder {folder} is not writable.")
    if target.exists() and not os.access(target, os.W_OK):
        raise ExportError(f"cannot write {target}: the file exists and is read-only.")
    return target


def check_opset_for(subject: Subject, opset: int) -> None:
    """The opset must express the subject's scheme (per-axis scales need opset 13)."""
    config = subject.config  # None: a float model
    check_opset(
        opset,
        needs_per_axis=config is not None and config.weight_granularity == "per_channel",
        needs_dynamic=config is not None and config.mode == "dynamic",
    )
