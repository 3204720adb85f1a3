"""``fxquant compare MODEL_DIR QUANT_DIR``: fp32 against its saved int8 model, the seed
document's comparison table from the command line.

Per model: size (``state_dict()`` bytes, shared tensors once), latency (median of timed forward
passes on the first input, the two models interleaved) and, for the int8 model, its error against
fp32 over every input: cosine similarity of the logits (per position, averaged) and top-1
agreement (the share of positions whose largest logit is the same token). Inputs are the lines of
``--texts`` (tokenized by the model folder's tokenizer) or random token ids.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate
from torch import nn

from .. import measure
from ..errors import SaveLoadError
from .hf_folder import encode, load_float_model, random_tokens, read_texts
from .text import size


def _logits(output: Any) -> torch.Tensor:
    for name in ("logits", "last_hidden_state"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    return output[0] if isinstance(output, tuple) else output


def _inputs(float_model: Any, texts: Path | None, batch: int, length: int,
            count: int) -> list[dict[str, torch.Tensor]]:
    if texts is None:
        return [random_tokens(float_model.vocab_size, batch, length, seed=i) for i in range(count)]
    if float_model.tokenizer is None:
        raise SaveLoadError("--texts needs a tokenizer in the model folder (tokenizer.json); "
                            "leave --texts out to compare on random tokens.")
    return [encode(float_model.tokenizer, t, length) for t in read_texts(texts)]


def _latency_ms(models: dict[str, nn.Module], inputs: dict[str, torch.Tensor],
                rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model(**inputs)
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(**inputs)
                samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(s) for name, s in samples.items()}


def _errors(ref: nn.Module, quant: nn.Module, batches: list[dict[str, torch.Tensor]]
            ) -> dict[str, float]:
    cosines, agree, positions = [], 0, 0
    with torch.no_grad():
        for inputs in batches:
            a, b = _logits(ref(**inputs)).float(), _logits(quant(**inputs)).float()
            keep = inputs["attention_mask"].bool().reshape(-1)
            a, b = a.reshape(keep.numel(), -1)[keep], b.reshape(keep.numel(), -1)[keep]
            cosines.append(torch.nn.functional.cosine_similarity(a, b, dim=-1))
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            positions += int(keep.sum())
    return {"logits_cosine": float(torch.cat(cosines).mean()),
            "top1_agreement": agree / max(positions, 1)}


def compare_command(model_dir: Path, quant_dir: Path, texts: Path | None, batch: int,
                    length: int, rounds: int, as_json: bool) -> int:
    """``fxquant compare``: the float and the saved int8 model side by side (size, latency,
    logit error); returns the exit status."""
    from .. import serialize

    float_model = load_float_model(model_dir)
    quant = serialize.load(quant_dir)
    batches = _inputs(float_model, texts, batch, length, count=4)
    models = {"fp32": float_model.model, "int8": quant}
    latency = _latency_ms(models, batches[0], rounds)
    result: dict[str, Any] = {  # the JSON document
        "inputs": {"count": len(batches), "source": str(texts) if texts else "random tokens",
                   "shape": list(batches[0]["input_ids"].shape)},
        "models": {name: {"size_bytes": measure.model_size_bytes(m), "latency_ms": latency[name]}
                   for name, m in models.items()},
    }
    result["models"]["int8"].update(_errors(float_model.model, quant, batches))
    if as_json:
        print(json.dumps(result, indent=2))
        return 0
    print(_table(result))
    return 0


def _table(result: dict[str, Any]) -> str:
    fp32, int8 = result["models"]["fp32"], result["models"]["int8"]
    rows = [
        ("FP32", size(fp32["size_bytes"]), f"{fp32['latency_ms']:.2f}", "1", "-", "-"),
        ("Int8 (fxquant)", size(int8["size_bytes"]), f"{int8['latency_ms']:.2f}",
         f"{fp32['latency_ms'] / int8['latency_ms']:.2f}x", f"{int8['logits_cosine']:.4f}",
         f"{int8['top1_agreement']:.1%}"),
    ]
    inputs = result["inputs"]
    head = (f"{inputs['count']} inputs ({inputs['source']}), latency on shape "
            f"{inputs['shape']}, median")
    table = tabulate(rows, headers=("model", "size", "latency (ms)", "speed-up",
                                    "logits cosine", "top-1 agreement"),
                     tablefmt="simple_outline")
    return f"{head}\n{table}"
