"""Greedy generation over ONNX Runtime with a decoder file's KV cache.

    tokens = ort_generate("model.onnx", input_ids, attention_mask, max_new_tokens=32)

Reads any file in the decoder layout (:mod:`.decoder`: fxquant's, and Hugging Face Optimum's
``text-generation-with-past``): a prefill of the whole prompt with an empty past (length 0), then
one token per step, feeding the ``present.*`` outputs back as ``past_key_values.*``. Batches are
left-padded (``attention_mask`` 0 on the left), as for ``transformers``' ``generate``; position ids
are computed the way ``generate`` computes them, so the tokens are the ones
``model.generate(do_sample=False)`` picks when the file computes what the model computes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ExampleInputError, ExportError

_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)$")


@dataclass(frozen=True)
class DecoderSession:
    """An ONNX Runtime session on a decoder file, with the layout read from its inputs."""

    session: Any  # onnxruntime.InferenceSession
    past_names: tuple[str, ...]
    present_names: tuple[str, ...]
    kv_shape: tuple[int, int]  # (kv_heads, head_dim)
    position_ids: bool
    past_dtype: np.dtype

    @classmethod
    def of(cls, model: Any, options: Any = None) -> DecoderSession:
        """From an ``InferenceSession`` or a path (opened on the CPU provider)."""
        import onnxruntime as ort

        session = model if isinstance(model, ort.InferenceSession) else ort.InferenceSession(
            str(model), options, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in session.get_inputs()}
        past = sorted((n for n in inputs if _PAST.match(n)), key=_layer_order)
        if "input_ids" not in inputs or "attention_mask" not in inputs or not past:
            raise ExportError(
                f"{_name(model)} is not a decoder with a KV cache (inputs input_ids, "
                "attention_mask, past_key_values.<i>.key/value); export the causal LM with "
                "fxquant.export_onnx (kv_cache=None or True)."
            )
        shape = inputs[past[0]].shape
        if not all(isinstance(d, int) for d in (shape[1], shape[3])):
            raise ExportError(f"{_name(model)}: {past[0]} must have fixed kv_heads and head_dim.")
        present = tuple(n.replace("past_key_values.", "present.") for n in past)
        dtype = np.float16 if "float16" in inputs[past[0]].type else np.float32
        return cls(session, tuple(past), present, (shape[1], shape[3]),
                   "position_ids" in inputs, np.dtype(dtype))

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        heads, dim = self.kv_shape
        return {n: np.zeros((batch, heads, 0, dim), self.past_dtype) for n in self.past_names}

    def step(self, ids: np.ndarray, mask: np.ndarray, past: dict[str, np.ndarray]
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits of the last position [batch, vocab] and the new cache."""
        feeds = {"input_ids": ids, "attention_mask": mask, **past}
        if self.position_ids:
            feeds["position_ids"] = positions(mask, ids.shape[1])
        outputs = self.session.run(["logits", *self.present_names], feeds)
        present = dict(zip(self.past_names, outputs[1:], strict=True))
        return outputs[0][:, -1], present


def _layer_order(name: str) -> tuple[int, int]:
    match = _PAST.match(name)
    assert match is not None
    return int(match.group(1)), 0 if match.group(2) == "key" else 1


def _name(model: Any) -> str:
    return str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__


def positions(mask: np.ndarray, new_tokens: int) -> np.ndarray:
    """``generate``'s position ids for the last ``new_tokens`` tokens (pads get 0)."""
    pos = np.cumsum(mask, axis=-1, dtype=np.int64) - 1
    pos[mask == 0] = 0
    return np.ascontiguousarray(pos[:, -new_tokens:])


def _as_numpy(value: Any, name: str) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ExampleInputError(f"{name} must be an integer array [batch, sequence]; got "
                                f"{array.dtype} {array.shape}.")
    return array.astype(np.int64)


def ort_generate(
    model: Any,
    input_ids: Any,
    attention_mask: Any = None,
    *,
    max_new_tokens: int = 20,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
) -> Any:
    """Greedy decoding with ONNX Runtime: the prompt and ``max_new_tokens`` new tokens.

    Args:
        model: an ``onnxruntime.InferenceSession``, a :class:`DecoderSession` or a path.
        input_ids: [batch, sequence] token ids (a tensor or array), left-padded.
        attention_mask: 1 for real tokens, 0 for padding (default: all ones).
        eos_token_id: a row that emits it is finished; it gets ``pad_token_id`` afterwards, and
            generation stops early when every row is finished (as ``generate`` does).

    Returns:
        [batch, sequence + new] token ids, a tensor when ``input_ids`` is one, else an array.
    """
    decoder = model if isinstance(model, DecoderSession) else DecoderSession.of(model)
    ids = _as_numpy(input_ids, "input_ids")
    mask = np.ones_like(ids) if attention_mask is None else _as_numpy(attention_mask,
                                                                     "attention_mask")
    if mask.shape != ids.shape:
        raise ExampleInputError(f"attention_mask {mask.shape} must match input_ids {ids.shape}.")
    tokens, new, past = ids, ids, decoder.empty_past(ids.shape[0])
    done = np.zeros(ids.shape[0], dtype=bool)
    for _ in range(max_new_tokens):
        logits, past = decoder.step(new, mask, past)
        nxt = np.where(done, pad_token_id, logits.argmax(-1)).astype(np.int64)[:, None]
        tokens = np.concatenate([tokens, nxt], axis=1)
        if eos_token_id is not None:
            done |= nxt[:, 0] == eos_token_id
        if done.all():
            break
        new, mask = nxt, np.concatenate([mask, np.ones_like(nxt)], axis=1)
    return torch.from_numpy(tokens) if isinstance(input_ids, torch.Tensor) else tokens
