"""Generation speed of quantized Hugging Face causal LMs: decode and prefill tokens/s.

    python benchmarks/bench_generate.py                 # GPT-2 small + Llama-shaped, 2 threads
    python benchmarks/bench_generate.py --models gpt2 --reps 3
    python benchmarks/bench_generate.py --memory        # also quantize time / peak RSS, GPT-2 S/M/L

Batch 1, a 16-token prompt, 64 new greedy tokens with the KV cache (``generate``, forced to run
all 64 steps). Decode tokens/s = 64 / (t(65 new tokens) - t(1 new token)): the prefill cancels.
Prefill tokens/s: one 128-token forward. Candidates, interleaved in every repetition:
HF fp32, fxquant dynamic / static / weight_only (int8 per channel) / weight_only int4 (4-bit,
group 128, round-to-nearest), torch.ao ``quantize_dynamic`` (GPT-2's Conv1D converted to nn.Linear
by hand first, as an expert would) and torchao's int8 configs when torchao is installed; with
``--compile``, also HF fp32 and fxquant dynamic (its portable twin, and the packed runtime model
itself) under ``torch.compile`` with a static KV cache. Greedy agreement: share of the 64 tokens
equal to fp32's (on random weights logits are nearly flat, so this measures near-ties); logits
cosine: the 128-token prefill's logits against fp32's, the accuracy figure. Size on disk:
``fxquant.save`` (``save_pretrained`` for fp32).

Weights are random (no downloads); they are created in memory, so no memory-mapped file pages
can be evicted during timing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fxquant
from benchmarks.common import cpu_model, uptime, write_json

PROMPT, NEW, PREFILL = 16, 64, 128


def build(name: str) -> torch.nn.Module:
    import transformers as T

    torch.manual_seed(0)
    if name == "gpt2":
        return T.GPT2LMHeadModel(T.GPT2Config()).eval()
    cfg = T.LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                        num_attention_heads=16, num_key_value_heads=4, vocab_size=32000)
    return T.LlamaForCausalLM(cfg).eval()


def conv1d_to_linear(model: torch.nn.Module) -> torch.nn.Module:
    """GPT-2's Conv1D layers as nn.Linear (weight transposed): what torch.ao needs to see them."""
    from transformers.pytorch_utils import Conv1D

    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape
                linear = torch.nn.Linear(n_in, n_out)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    linear.bias.copy_(child.bias)
                setattr(parent, child_name, linear)
    return model


def candidates(model: torch.nn.Module, name: str) -> dict[str, torch.nn.Module]:
    ids = torch.randint(0, model.config.vocab_size, (2, PROMPT))
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    calib = [{"input_ids": (i := torch.randint(0, model.config.vocab_size, (2, 32))),
              "attention_mask": torch.ones_like(i)} for _ in range(4)]
    out: dict[str, torch.nn.Module] = {"HF fp32": model}
    for label, config in FXQUANT_CONFIGS.items():
        out[label] = fxquant.quantize(model, example, calibration=calib, config=config,
                                      progress=False)
    ao_source = conv1d_to_linear(model) if name == "gpt2" else model
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["torch.ao dynamic"] = torch.ao.quantization.quantize_dynamic(
            ao_source, {torch.nn.Linear}, dtype=torch.qint8)
    out.update(torchao_candidates(ao_source))
    return out


FXQUANT_CONFIGS = {
    "fxquant dynamic": fxquant.QuantConfig(mode="dynamic"),
    "fxquant static": fxquant.QuantConfig(mode="static"),
    "fxquant weight_only": fxquant.QuantConfig(mode="weight_only"),
    "fxquant weight_only int4 g128": fxquant.QuantConfig(
        mode="weight_only", weight_bits=4, weight_granularity="per_group", group_size=128),
}


def compiled_candidates(models: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
    """HF fp32, fxquant dynamic's portable twin and fxquant dynamic itself (its packed runtime
    form) with ``forward`` under ``torch.compile`` (generate then uses a static KV cache: see
    ``_generate``)."""
    out = {}
    for label, model in (("HF fp32 compiled", copy.deepcopy(models["HF fp32"])),
                         ("fxquant dynamic compiled",
                          fxquant.portable(models["fxquant dynamic"])),
                         ("fxquant dynamic packed compiled",
                          copy.deepcopy(models["fxquant dynamic"]))):
        model.forward = torch.compile(model.forward, dynamic=False)
        model.bench_static_cache = True
        out[label] = model
    return out


def size_on_disk_mb(name: str, model: torch.nn.Module) -> float | None:
    if "torch" in name or "compiled" in name:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        if name == "HF fp32":
            model.save_pretrained(tmp)
        else:
            fxquant.save(model, tmp)
        return sum(p.stat().st_size for p in Path(tmp).rglob("*.safetensors")) / 1e6


def torchao_candidates(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except Exception as exc:  # not installed, or built for another torch
        print(f"torchao unavailable: {exc}", file=sys.stderr)
        return {}
    out = {}
    for label, config in (("torchao int8 dynamic", Int8DynamicActivationInt8WeightConfig()),
                          ("torchao int8 weight-only", Int8WeightOnlyConfig())):
        try:
            m = copy.deepcopy(model)
            quantize_(m, config)
            out[label] = m
        except Exception as exc:
            print(f"{label} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return out


def _generate(model: torch.nn.Module, ids: torch.Tensor, new: int) -> torch.Tensor:
    static = getattr(model, "bench_static_cache", False)  # compiled: one shape for the cache
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                               max_new_tokens=new, min_new_tokens=new, do_sample=False,
                               pad_token_id=0, cache_implementation="static" if static else None)


def _time(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(models: dict[str, torch.nn.Module], vocab: int, reps: int) -> dict[str, dict]:
    ids = torch.randint(0, vocab, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    long = torch.randint(0, vocab, (1, PREFILL), generator=torch.Generator().manual_seed(2))
    times: dict[str, dict[str, list[float]]] = {k: {"short": [], "full": [], "prefill": []}
                                                for k in models}
    tokens = {}
    for name, m in models.items():  # warm-up, and the tokens each produces
        _generate(m, ids, 2)
        tokens[name] = _generate(m, ids, NEW)[0, PROMPT:]
    for _ in range(reps):  # interleaved: every candidate once per repetition
        for name, m in models.items():
            times[name]["short"].append(_time(lambda m=m: _generate(m, ids, 1)))
            times[name]["full"].append(_time(lambda m=m: _generate(m, ids, NEW + 1)))
            with torch.no_grad():
                times[name]["prefill"].append(_time(lambda m=m: m(input_ids=long)))
    ref = tokens["HF fp32"]
    with torch.no_grad():
        logits = {name: m(input_ids=long).logits[0] for name, m in models.items()}
    out = {}
    for name, t in times.items():
        decode_s = statistics.median(t["full"]) - statistics.median(t["short"])
        out[name] = {
            "decode_tok_s": NEW / decode_s,
            "prefill_tok_s": PREFILL / statistics.median(t["prefill"]),
            "greedy_agreement": float((tokens[name] == ref).float().mean()),
            "logits_cosine": float(torch.nn.functional.cosine_similarity(
                logits[name], logits["HF fp32"], dim=-1).mean()),
            "size_mb": size_on_disk_mb(name, models[name]),
        }
    base = out["HF fp32"]
    for row in out.values():
        row["decode_vs_fp32"] = row["decode_tok_s"] / base["decode_tok_s"]
        row["prefill_vs_fp32"] = row["prefill_tok_s"] / base["prefill_tok_s"]
    return out


def quantize_memory(size: str) -> dict[str, float]:
    """Quantize GPT-2 ``size`` in a fresh process: wall time and extra peak RSS over the fp32
    model's own (VmHWM after reset), in units of the fp32 weight bytes."""
    code = f"""
import json, time, torch, fxquant, transformers as T
cfgs = {{"small": T.GPT2Config(), "medium": T.GPT2Config(n_embd=1024, n_layer=24, n_head=16),
        "large": T.GPT2Config(n_embd=1280, n_layer=36, n_head=20)}}
torch.manual_seed(0)
m = T.GPT2LMHeadModel(cfgs["{size}"]).eval()
nbytes = sum(p.numel() * 4 for p in m.parameters())
st = lambda k: int(open("/proc/self/status").read().split(k + ":")[1].split()[0]) * 1024
base = st("VmRSS"); open("/proc/self/clear_refs", "w").write("5")
ids = torch.randint(0, 50257, (1, 16))
t = time.perf_counter(); q = fxquant.quantize(m, (ids,), progress=False)
dt = time.perf_counter() - t
print(json.dumps({{"fp32_mb": nbytes / 1e6, "quantize_s": dt,
                  "extra_peak_x_fp32": (st("VmHWM") - base) / nbytes}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=["gpt2", "llama"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="add torch.compile candidates (static KV cache; minutes to compile)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    uptime_before = uptime()
    results: dict[str, Any] = {}
    for name in args.models:
        model = build(name)
        models = candidates(model, name)
        if args.compile:
            models.update(compiled_candidates(models))
        results[name] = measure(models, model.config.vocab_size, args.reps)
        rows = [(k, f"{v['decode_tok_s']:.1f}", f"{v['decode_vs_fp32']:.2f}x",
                 f"{v['prefill_tok_s']:.0f}", f"{v['prefill_vs_fp32']:.2f}x",
                 f"{v['greedy_agreement']:.2f}", f"{v['logits_cosine']:.5f}",
                 "" if v["size_mb"] is None else f"{v['size_mb']:.0f}")
                for k, v in results[name].items()]
        print(f"\n{name} (batch 1, {PROMPT}-token prompt, {NEW} greedy tokens, "
              f"{args.threads} threads)")
        print(tabulate(rows, headers=("candidate", "decode tok/s", "vs fp32", "prefill tok/s",
                                      "vs fp32", "greedy = fp32", "logits cos", "disk MB")))
        del models, model
    if args.memory:
        results["quantize"] = {s: quantize_memory(s) for s in ("small", "medium", "large")}
        print(tabulate([(s, f"{v['fp32_mb']:.0f}", f"{v['quantize_s']:.1f}",
                         f"{v['extra_peak_x_fp32']:.2f}x") for s, v in results["quantize"].items()],
                       headers=("GPT-2", "fp32 MB", "quantize s", "extra peak RSS / fp32")))
    payload = {"results": results, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
               "uptime_before": uptime_before,
               "uptime_after": uptime(),
               "cpu": cpu_model()}
    print("wrote", write_json("bench_generate", payload))


if __name__ == "__main__":
    main()
