"""A causal LM as one ONNX decoder with its KV cache as inputs and outputs (Optimum's layout).

    inputs   input_ids                        int64 [batch, sequence]
             attention_mask                   int64 [batch, total_sequence]  (past + new; 0 = pad)
             position_ids                     int64 [batch, sequence]  (where the model takes them)
             past_key_values.{i}.key / .value float32 [batch, kv_heads, past_sequence, head_dim]
    outputs  logits                           float32 [batch, 1, vocab]  (all_logits: sequence)
             present.{i}.key / .value         float32 [batch, kv_heads, total_sequence, head_dim]

One file serves the prefill (a past of length 0: tensors of shape [batch, kv_heads, 0, head_dim])
and every decode step; batch, sequence and past length are dynamic. This is the layout Hugging Face
Optimum writes for ``text-generation-with-past`` and that ONNX Runtime generation loops read, with
one difference by default: ``logits`` holds the last position only, which is all generation reads
and what ``transformers``' ``generate`` computes (``logits_to_keep=1``). That matters beyond speed:
a dynamic int8 ``lm_head`` quantizes its input with one range per tensor, so its input must be the
same rows as in PyTorch for the file to pick the same tokens. ``all_logits=True`` writes every
position's logits (Optimum's [batch, sequence, vocab], for scoring).

Requires: a Hugging Face ``PreTrainedModel`` that can generate (``*ForCausalLM``), float or
quantized by fxquant region by region (the model stays its own class).
Guarantees: :class:`KVCacheDecoder` takes and returns flat tensors only, so the TorchScript exporter
traces it; the trace example has a non-empty past, so the graph keeps the concatenation of past and
new keys.
Why a wrapper: the model takes and returns a ``transformers.Cache`` object, which the exporter
cannot see through; the wrapper rebuilds a ``DynamicCache`` from the past tensors on every call.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import ops
from ..errors import ExampleInputError, ExportError
from .spec import ExportSpec, ValidationCase

BATCH, SEQUENCE, PAST, TOTAL = "batch", "sequence", "past_sequence", "total_sequence"


@dataclass(frozen=True)
class DecoderLayout:
    """Names and shapes of a decoder file (``ort_generate`` finds them by these names)."""

    num_layers: int
    kv_heads: int
    head_dim: int
    position_ids: bool  # whether the model (and the file) takes position_ids
    cache_argument: str  # the model's keyword for the cache ("cache" or "past_key_values")
    all_logits: bool = False  # logits of every position, not only the last

    @property
    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kv}" for i in range(self.num_layers)
                for kv in ("key", "value")]

    @property
    def present_names(self) -> list[str]:
        return [f"present.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")]

    @property
    def input_names(self) -> list[str]:
        tokens = ["input_ids", "attention_mask"] + (["position_ids"] if self.position_ids else [])
        return tokens + self.past_names

    @property
    def output_names(self) -> list[str]:
        return ["logits", *self.present_names]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes: dict[str, dict[int, str]] = {
            "input_ids": {0: BATCH, 1: SEQUENCE},
            "attention_mask": {0: BATCH, 1: TOTAL},
            "logits": {0: BATCH, 1: SEQUENCE} if self.all_logits else {0: BATCH},
        }
        if self.position_ids:
            axes["position_ids"] = {0: BATCH, 1: SEQUENCE}
        axes.update({name: {0: BATCH, 2: PAST} for name in self.past_names})
        axes.update({name: {0: BATCH, 2: TOTAL} for name in self.present_names})
        return axes

    def metadata(self) -> dict[str, str]:
        """``metadata_props`` entry describing the layout (``validate_onnx`` reads it)."""
        layout = {"layout": "optimum-decoder-with-past", "num_layers": self.num_layers,
                  "kv_heads": self.kv_heads, "head_dim": self.head_dim,
                  "position_ids": self.position_ids, "all_logits": self.all_logits}
        return {"fxquant.kv_cache": json.dumps(layout, sort_keys=True)}

    def empty_past(self, batch: int) -> list[torch.Tensor]:
        """The past of a prefill: ``2 * num_layers`` tensors of length 0."""
        return [torch.zeros(batch, self.kv_heads, 0, self.head_dim)
                for _ in range(2 * self.num_layers)]


def is_causal_lm(model: nn.Module) -> bool:
    """A Hugging Face model that generates text with a KV cache (``*ForCausalLM``)."""
    transformers = sys.modules.get("transformers")
    if transformers is None or not isinstance(model, transformers.PreTrainedModel):
        return False
    config = model.config
    return (bool(model.can_generate()) and not getattr(config, "is_encoder_decoder", False)
            and _cache_argument(model) is not None)


def _cache_argument(model: nn.Module) -> str | None:
    params = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def present_of(output: Any) -> list[torch.Tensor]:
    """The cache a model call returned, as flat [key_0, value_0, key_1, ...] tensors."""
    cache = output.get("cache", None) if hasattr(output, "get") else None
    cache = cache if cache is not None else getattr(output, "past_key_values", None)
    if cache is None:
        raise ExportError(
            "the model returned no KV cache although use_cache=True was passed; export it "
            "without one (kv_cache=False)."
        )
    flat: list[torch.Tensor] = []
    for layer in cache.layers:
        flat += [layer.keys, layer.values]
    return flat


def positions(attention_mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Position ids of the last ``new_tokens`` tokens, as ``generate`` computes them for
    left-padded batches: the count of real tokens before each one (pads get 0)."""
    pos = attention_mask.long().cumsum(-1) - 1
    pos = pos.masked_fill(attention_mask == 0, 0)
    return pos[:, -new_tokens:]


class KVCacheDecoder(nn.Module):
    """``model`` with flat tensors in and out, in :class:`DecoderLayout`'s order."""

    def __init__(self, model: nn.Module, layout: DecoderLayout) -> None:
        super().__init__()
        self.model = model
        self.layout = layout

    def forward(self, *flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        named = dict(zip(self.layout.input_names, flat, strict=True))
        cache = DynamicCache()
        past = [named[n] for n in self.layout.past_names]
        for i in range(self.layout.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        kwargs: dict[str, Any] = {
            "input_ids": named["input_ids"],
            "attention_mask": named["attention_mask"],
            self.layout.cache_argument: cache,
            "use_cache": True,
        }
        if self.layout.position_ids:
            kwargs["position_ids"] = named["position_ids"]
        if not self.layout.all_logits:
            kwargs["logits_to_keep"] = 1
        output = self.model(**kwargs)
        return (output.logits, *present_of(output))


def _tokens(example_inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) from a dict / tokenizer output, a tuple, or one tensor."""
    if isinstance(example_inputs, Mapping):
        ids, mask = example_inputs.get("input_ids"), example_inputs.get("attention_mask")
    elif isinstance(example_inputs, (tuple, list)):
        ids = example_inputs[0] if example_inputs else None
        mask = example_inputs[1] if len(example_inputs) > 1 else None
    else:
        ids, mask = example_inputs, None
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
        raise ExampleInputError(
            "a causal LM exports with example inputs holding input_ids (an integer tensor "
            "[batch, sequence]): pass {'input_ids': ids, 'attention_mask': mask}, (ids, mask) or "
            "ids."
        )
    if mask is None:
        mask = torch.ones_like(ids)
    if not isinstance(mask, torch.Tensor) or mask.shape != ids.shape:
        raise ExampleInputError(
            f"attention_mask must be a tensor shaped like input_ids {tuple(ids.shape)}."
        )
    return ids.long(), mask.long()


def probe_layout(model: nn.Module, example_inputs: Any, all_logits: bool = False
                 ) -> DecoderLayout:
    """Run ``model`` once with its cache on (the first example row, two tokens) and read the
    cache's layout."""
    ids, mask = _tokens(example_inputs)
    argument = _cache_argument(model)
    assert argument is not None
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    try:
        with torch.no_grad():
            out = model(input_ids=ids[:1, :2], attention_mask=mask[:1, :2], use_cache=True)
        present = present_of(out)
    except ExportError:
        raise
    except Exception as exc:
        raise ExampleInputError(
            f"{type(model).__name__} failed on the example input_ids {tuple(ids.shape)} with "
            f"use_cache=True: {type(exc).__name__}: {exc}."
        ) from None
    _, heads, _, head_dim = present[0].shape
    if not all_logits and "logits_to_keep" not in inspect.signature(model.forward).parameters:
        all_logits = True  # the model computes every position's logits
    return DecoderLayout(len(present) // 2, heads, head_dim, takes_positions, argument,
                         all_logits)


def _widened(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """At least 2 rows and 4 tokens, so the tracer sees no size-1 axis it could bake in."""
    rows = max(1, -(-2 // ids.shape[0]))
    cols = max(1, -(-4 // ids.shape[1]))
    return ids.repeat(rows, cols), mask.repeat(rows, cols)


def trace_inputs(
    decoder: KVCacheDecoder, example_inputs: Any
) -> tuple[torch.Tensor, ...]:
    """The tracing example: the example's first half as the past (computed by the model), its
    second half as the new tokens."""
    ids, mask = _widened(*_tokens(example_inputs))
    split = ids.shape[1] // 2
    layout = decoder.layout
    with torch.no_grad():
        prefix = feeds(layout, ids[:, :split], mask[:, :split], layout.empty_past(ids.shape[0]))
        past = list(decoder(*prefix)[1:])
    return feeds(layout, ids[:, split:], mask, past)


def feeds(layout: DecoderLayout, ids: torch.Tensor, mask: torch.Tensor,
          past: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The decoder's inputs, in order, for new tokens ``ids`` with the full ``mask``."""
    tokens = [ids, mask] + ([positions(mask, ids.shape[1])] if layout.position_ids else [])
    return (*tokens, *past)


def output_masks(layout: DecoderLayout, mask: torch.Tensor, new_tokens: int
                 ) -> dict[str, torch.Tensor]:
    """The real positions of each output: logits of the new tokens, cache rows of all tokens."""
    keep = mask != 0
    masks = {"logits": keep[:, -(new_tokens if layout.all_logits else 1):, None]}
    masks.update({name: keep[:, None, :, None] for name in layout.present_names})
    return masks


def validation_cases(
    twin: nn.Module, layout: DecoderLayout, example_inputs: Any, steps: int
) -> list[ValidationCase]:
    """A prefill of the example (past length 0) and ``steps`` greedy decode steps, each fed the
    twin's own next token and cache, with the twin's outputs."""
    ids, mask = _tokens(example_inputs)
    past: Sequence[torch.Tensor] = layout.empty_past(ids.shape[0])
    cases = []
    for step in range(steps + 1):
        inputs = feeds(layout, ids, mask, past)
        with torch.no_grad(), ops.reference_kernels():
            out = tuple(twin(*inputs))
        name = f"decode {step}" if step else "prefill"
        cases.append(ValidationCase(name, inputs, out, output_masks(layout, mask, ids.shape[1])))
        ids = out[0][:, -1:].argmax(-1)
        mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
        past = out[1:]
    return cases


def decoder_spec(model: nn.Module, example_inputs: Any, *, all_logits: bool = False,
                 steps: int = 3) -> ExportSpec:
    """The export of a causal LM as one decoder with its KV cache (the layout above)."""
    layout = probe_layout(model, example_inputs, all_logits)
    module = KVCacheDecoder(model, layout)
    return ExportSpec(
        module, trace_inputs(module, example_inputs), layout.input_names, layout.output_names,
        layout.dynamic_axes(), "model",
        wrap=lambda m: KVCacheDecoder(m, layout),
        cases=lambda twin: validation_cases(twin, layout, example_inputs, steps),
        metadata=layout.metadata(),
    )


def wants_kv_cache(model: nn.Module, kv_cache: bool | None) -> bool:
    """Whether to export ``model`` as a decoder with its KV cache (None: for causal LMs whose
    config keeps ``use_cache`` on, the default of every one)."""
    if kv_cache is None:
        return is_causal_lm(model) and bool(getattr(model.config, "use_cache", True))
    if kv_cache and not is_causal_lm(model):
        raise ExportError(
            f"kv_cache=True: {type(model).__name__} is not a Hugging Face causal LM that "
            "generates with a cache (a *ForCausalLM, float or quantized by fxquant.quantize). "
            "Export it with kv_cache=None or False."
        )
    return kv_cache
