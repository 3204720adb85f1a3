"""The kernel layer end to end: what packing once and the weight-only kernel buy on real shapes.

    python benchmarks/bench_runtime.py            # everything, 1 thread (the issue's setting)
    python benchmarks/bench_runtime.py --only gpt2 mlp --threads 2

* HF GPT-2 small, one decode step (batch 1, one new token on a 16-token KV cache): fp32,
  fxquant dynamic / static / weight_only, torch.ao ``quantize_dynamic`` after converting Conv1D to
  nn.Linear by hand; logits cosine against fp32.
* The seed MLP (784-512-256-10) at batch 1 and 32: fp32, fxquant dynamic / weight_only, torch.ao.
* Real all-MiniLM-L6-v2, 8 sentences x 64 tokens: fp32 vs fxquant dynamic, real-token cosine.
* Resident memory of a quantized GPT-2 medium while it runs (float model freed, one forward
  done), dynamic and weight_only, in units of the fp32 weight bytes (fresh process each).

Candidates are interleaved (round-robin, many short repetitions) and medians reported; the load
average is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fxquant
from benchmarks.bench_generate import conv1d_to_linear
from benchmarks.common import write_json
from tests.models import seed_mlp


def interleaved_ms(fns: dict[str, Callable[[], Any]], rounds: int = 30, inner: int = 5,
                   warmup: int = 3) -> dict[str, float]:
    """Median ms per call of each fn, timed round-robin so load changes hit all alike."""
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                start = time.perf_counter()
                for _ in range(inner):
                    fn()
                times[name].append((time.perf_counter() - start) / inner)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def _quiet_ao(model: torch.nn.Module) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def gpt2_step() -> dict[str, Any]:
    import transformers as T

    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(T.GPT2Config()).eval()
    ids = torch.randint(0, 50257, (1, 16))
    calib = [{"input_ids": torch.randint(0, 50257, (2, 32))} for _ in range(4)]
    models = {"fp32": model, "torch.ao dynamic": _quiet_ao(conv1d_to_linear(model))}
    for mode in ("dynamic", "static", "weight_only"):
        models[f"fxquant {mode}"] = fxquant.quantize(
            model, {"input_ids": ids}, calibration=calib, config=fxquant.QuantConfig(mode=mode),
            progress=False)
    nxt = torch.randint(0, 50257, (1, 1))
    with torch.no_grad():
        past = {k: m(input_ids=ids, use_cache=True).past_key_values for k, m in models.items()}
        logits = {k: m(input_ids=nxt, past_key_values=past[k]).logits for k, m in models.items()}

    def step(name: str) -> Callable[[], Any]:
        m, cache = models[name], past[name]

        def run() -> Any:
            out = m(input_ids=nxt, past_key_values=cache, use_cache=True)
            cache.crop(-1)  # back to the same 16-token past for the next call
            return out
        return run

    ms = interleaved_ms({k: step(k) for k in models})
    return {k: {"ms": v, "vs_fp32": ms["fp32"] / v, "vs_torch_ao": ms["torch.ao dynamic"] / v,
                "logits_cosine": _cos(logits[k], logits["fp32"])} for k, v in ms.items()}


def seed_mlp_rows() -> dict[str, Any]:
    torch.manual_seed(0)
    model = seed_mlp().eval()
    out = {}
    for batch in (1, 32):
        x = torch.randn(batch, 784)
        models = {"fp32": model, "torch.ao dynamic": _quiet_ao(model)}
        for mode in ("dynamic", "weight_only"):
            models[f"fxquant {mode}"] = fxquant.quantize(
                model, (x,), config=fxquant.QuantConfig(mode=mode), progress=False)
        ms = interleaved_ms({k: (lambda m=m, x=x: m(x)) for k, m in models.items()}, rounds=60,
                            inner=20)
        out[f"batch {batch}"] = {k: {"ms": v, "vs_fp32": ms["fp32"] / v,
                                     "vs_torch_ao": ms["torch.ao dynamic"] / v}
                                 for k, v in ms.items()}
    return out


def minilm() -> dict[str, Any]:
    from benchmarks.minilm_data import extract_sentences, find_minilm_dir, load_minilm

    model, tok = load_minilm(find_minilm_dir())
    model = _in_memory(model)
    sentences = [s for s, _ in extract_sentences(8)]
    enc = tok(sentences, padding="max_length", truncation=True, max_length=64,
              return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    q = fxquant.quantize(model, batch, progress=False)
    per_token = fxquant.quantize(model, batch, progress=False, config=fxquant.QuantConfig(
        activation_granularity="per_token"))
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
        cos = {k: _cos(m(**batch).last_hidden_state[real], ref[real])
               for k, m in (("dynamic", q), ("per_token", per_token))}
    ms = interleaved_ms({"fp32": lambda: model(**batch), "fxquant dynamic": lambda: q(**batch),
                         "fxquant dynamic per-token": lambda: per_token(**batch)},
                        rounds=15, inner=2)
    return {"fp32_ms": ms["fp32"], "dynamic_ms": ms["fxquant dynamic"],
            "speedup": ms["fp32"] / ms["fxquant dynamic"], "real_token_cosine": cos["dynamic"],
            "per_token_ms": ms["fxquant dynamic per-token"],
            "per_token_speedup": ms["fp32"] / ms["fxquant dynamic per-token"],
            "per_token_real_token_cosine": cos["per_token"]}


def _in_memory(model: torch.nn.Module) -> torch.nn.Module:
    """Copy memory-mapped safetensors weights into RAM (cold file pages would slow timing)."""
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
    return model


def resident(mode: str) -> dict[str, float]:
    code = f"""
import gc, json, torch, fxquant, transformers as T
torch.manual_seed(0)
m = T.GPT2LMHeadModel(T.GPT2Config(n_embd=1024, n_layer=24, n_head=16)).eval()
nbytes = sum(p.numel() * 4 for p in m.parameters())
rss = lambda: int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024
gc.collect(); base_without_model = rss() - nbytes
ids = torch.randint(0, 50257, (1, 16))
q = fxquant.quantize(m, {{"input_ids": ids}}, config=fxquant.QuantConfig(mode="{mode}"),
                     progress=False)
del m; gc.collect()
with torch.no_grad():
    q(input_ids=ids)
gc.collect()
print(json.dumps({{"resident_x_fp32": (rss() - base_without_model) / nbytes}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", default=["gpt2", "mlp", "minilm", "memory"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"loadavg_before": os.getloadavg(), "threads": args.threads}
    if "gpt2" in args.only:
        results["gpt2_step"] = gpt2_step()
        print("\nHF GPT-2 small, one decode step (batch 1, 16-token cache)")
        print(tabulate([(k, f"{v['ms']:.2f}", f"{v['vs_fp32']:.2f}x", f"{v['vs_torch_ao']:.2f}x",
                         f"{v['logits_cosine']:.5f}") for k, v in results["gpt2_step"].items()],
                       headers=("", "ms", "vs fp32", "vs torch.ao", "logits cosine")))
    if "mlp" in args.only:
        results["seed_mlp"] = seed_mlp_rows()
        for batch, rows in results["seed_mlp"].items():
            print(f"\nseed MLP, {batch}")
            print(tabulate([(k, f"{v['ms'] * 1e3:.0f}", f"{v['vs_fp32']:.2f}x",
                             f"{v['vs_torch_ao']:.2f}x") for k, v in rows.items()],
                           headers=("", "us", "vs fp32", "vs torch.ao")))
    if "minilm" in args.only:
        results["minilm"] = minilm()
        print("\nMiniLM 8 x 64:", json.dumps(results["minilm"]))
    if "memory" in args.only:
        results["gpt2_medium_resident"] = {m: resident(m) for m in ("dynamic", "weight_only")}
        print("\nGPT-2 medium resident while running:",
              json.dumps(results["gpt2_medium_resident"]))
    results["loadavg_after"] = os.getloadavg()
    print("wrote", write_json("bench_runtime", results))


if __name__ == "__main__":
    main()
