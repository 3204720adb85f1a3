"""What the exporter traces and how the file is checked: one :class:`ExportSpec` per export.

Two kinds of export share the rest of the pipeline (lowering, metadata, validation, writing):

    plain_spec     the model called with the example's tensors, outputs flattened and named;
                   axis 0 of every tensor is ``batch`` and axis 1 of every token input (an
                   integer tensor [batch, sequence]) is ``sequence``, so any length runs
    decoder_spec   a causal LM with its KV cache as inputs and outputs (:mod:`.decoder`)

A spec also says how to build the same wrapper around another copy of the model (the validation
twins) and which inputs validation runs (:class:`ValidationCase`: the caller's example, and for a
decoder a prefill and decode steps).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils import _pytree as pytree

from .. import ops
from ..errors import ExampleInputError, ExportError
from . import checks

BATCH_AXIS = "batch"
SEQUENCE_AXIS = "sequence"
MASK_INPUT = "attention_mask"


@dataclass(frozen=True)
class ValidationCase:
    """One run of the file during validation: its inputs, the twin's outputs on them, and for each
    output the positions that count (True; from the caller's attention_mask, None: all)."""

    name: str
    inputs: tuple[torch.Tensor, ...]
    expected: tuple[torch.Tensor, ...]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)


CaseBuilder = Callable[[nn.Module], list[ValidationCase]]  # the wrapped twin -> cases


@dataclass(frozen=True)
class ExportSpec:
    """What to trace and how: wrapped module, example inputs, names, axes, validation cases."""

    module: nn.Module  # what the exporter traces
    inputs: tuple[torch.Tensor, ...]  # the tracing example
    input_names: list[str]
    output_names: list[str]
    axes: dict[str, dict[int, str]]
    root: str  # where the model sits inside ``module`` ("" or "model")
    wrap: Callable[[nn.Module], nn.Module]  # the same wrapper around another copy of the model
    cases: CaseBuilder
    metadata: dict[str, str] = field(default_factory=dict)  # extra metadata_props

    @property
    def axis_names(self) -> set[str]:
        return {name for dims in self.axes.values() for name in dims.values()}


def _input_names(model: nn.Module, count: int) -> list[str]:
    if isinstance(model, fx.GraphModule):
        names = [str(n.target) for n in model.graph.nodes if n.op == "placeholder"]
    else:
        names = list(inspect.signature(model.forward).parameters)
    names = [n.lstrip("*") for n in names][:count]
    return names + [f"input_{i}" for i in range(len(names), count)]


class FlatOutputs(nn.Module):
    """Returns the model's output tensors as one flat tuple (for dict / ModelOutput results)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(pytree.tree_leaves(self.model(*args)))


class WithoutCache(nn.Module):
    """A causal LM called with ``use_cache=False``, returning its logits: its export without
    the KV cache (``kv_cache=False``), for scoring whole sequences."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.model(*args, use_cache=False).logits


def positional(model: nn.Module, inputs: Mapping[str, Any]) -> tuple[Any, ...]:
    """Keyword inputs as the leading positional arguments of ``model.forward`` (the exporter
    traces positional inputs): they must be its first parameters, in any order."""
    params = [n for n, p in inspect.signature(model.forward).parameters.items()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    head = params[:len(inputs)]
    if sorted(head) != sorted(inputs):
        raise ExampleInputError(
            f"example inputs {sorted(inputs)} must be the first parameters of "
            f"{type(model).__name__}.forward ({', '.join(params[:len(inputs) + 2])}, ...) to be "
            "exported by name; pass a tuple in the order of forward's parameters instead."
        )
    return tuple(inputs[name] for name in head)


def is_token_input(tensor: torch.Tensor) -> bool:
    """An integer [batch, sequence] tensor: ids, attention masks, token types, positions."""
    return tensor.dim() == 2 and not tensor.is_floating_point() and tensor.dtype != torch.bool


def default_axes(
    inputs: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    *,
    dynamic_batch: bool,
    dynamic_sequence: bool,
    extra: Mapping[str, Mapping[int, str]] | None,
) -> dict[str, dict[int, str]]:
    """Axis 0 of everything is ``batch``; axis 1 of token inputs is ``sequence``; then ``extra``.

    Outputs get ``sequence`` where shape inference carries it from the inputs (finalize)."""
    axes: dict[str, dict[int, str]] = {}
    for name, tensor in zip(input_names, inputs, strict=True):
        dims = axes.setdefault(name, {})
        if dynamic_batch and tensor.dim() > 0:
            dims[0] = BATCH_AXIS
        if dynamic_sequence and is_token_input(tensor):
            dims[1] = SEQUENCE_AXIS
    for name in output_names:
        if dynamic_batch:
            axes[name] = {0: BATCH_AXIS}
    for name, more in (extra or {}).items():
        axes.setdefault(name, {}).update(more)
    return {name: dims for name, dims in axes.items() if dims}


def output_masks(
    input_names: Sequence[str], inputs: Sequence[torch.Tensor], output_names: Sequence[str],
    outputs: Sequence[torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Where the inputs hold an ``attention_mask`` [batch, sequence], the positions each output
    of shape [batch, sequence, ...] keeps (padding excluded from validation)."""
    named = dict(zip(input_names, inputs, strict=True))
    mask = named.get(MASK_INPUT)
    if mask is None or mask.dim() != 2:
        return {}
    keep = mask != 0
    return {
        name: keep.reshape(*keep.shape, *([1] * (out.dim() - 2)))
        for name, out in zip(output_names, outputs, strict=True)
        if out.dim() >= 2 and tuple(out.shape[:2]) == tuple(keep.shape)
    }


def _run(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    with torch.no_grad(), ops.reference_kernels():
        return tuple(pytree.tree_leaves(module(*inputs)))


def plain_spec(
    subject: checks.Subject,
    example_inputs: Any,
    *,
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
    dynamic_batch: bool,
    dynamic_sequence: bool,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None,
    without_cache: bool = False,
) -> ExportSpec:
    """The model called with the example's tensors (positional), outputs flattened.

    ``without_cache``: the model is a causal LM to call with ``use_cache=False`` (logits only).
    """
    names_from = subject.model
    if isinstance(example_inputs, Mapping):  # keyword inputs (a tokenizer's output)
        example_inputs = positional(names_from, example_inputs)
        input_names = input_names or list(_input_names(names_from, len(example_inputs)))
    if without_cache:
        subject = dataclasses.replace(subject, model=WithoutCache(subject.model))
        output_names = output_names or ["logits"]
    inputs, outputs = checks.run_example(subject, example_inputs)
    in_names = list(input_names) if input_names else _input_names(names_from, len(inputs))
    out_names = list(output_names) if output_names else list(outputs.names)
    if len(in_names) != len(inputs) or len(out_names) != len(outputs.names):
        raise ExportError(
            f"{len(in_names)} input names for {len(inputs)} inputs, {len(out_names)} output names "
            f"for {len(outputs.names)} outputs: pass one name per tensor."
        )

    def wrap(model: nn.Module) -> nn.Module:
        model = WithoutCache(model) if without_cache else model
        return model if outputs.flat else FlatOutputs(model)

    def cases(twin: nn.Module) -> list[ValidationCase]:
        expected = _run(twin, inputs)
        masks = output_masks(in_names, inputs, out_names, expected)
        return [ValidationCase("example", inputs, expected, masks)]

    axes = default_axes(inputs, in_names, out_names, dynamic_batch=dynamic_batch,
                        dynamic_sequence=dynamic_sequence, extra=dynamic_axes)
    root = ".".join(["model"] * (int(without_cache) + int(not outputs.flat)))
    return ExportSpec(wrap(names_from), inputs, in_names, out_names, axes, root, wrap, cases)
