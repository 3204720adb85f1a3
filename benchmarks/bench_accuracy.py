"""Accuracy of fxquant's quantization schemes on real all-MiniLM-L6-v2 weights.

Sentence-embedding cosine against fp32 (mean-pooled, 32 real sentences; mean and min) and the
Spearman rank correlation of all sentence-pair similarities, for: dynamic and static int8 (per
tensor and per token), SmoothQuant at several alphas, weight-only int8, and 4-bit group-wise
weights (g128) by round-to-nearest, GPTQ and AWQ, symmetric and asymmetric. Latency (batch 1 and
16 x 128 tokens, best of several runs: this machine is shared) for the rows whose kernels differ.

Calibration: 128 other sentences, sorted by length and batched 16 at a time (little padding: padded
positions are not data), for every row that needs it; nothing is downloaded
(benchmarks/minilm_data.py). Latency is CPU time on one thread (``time.thread_time``, best of
interleaved rounds): on this shared, throttled machine wall-clock minima moved by 10x between runs,
while the CPU time a forward pass takes does not depend on who else runs.

    python benchmarks/bench_accuracy.py              # ~30 minutes on 2 cores
    python benchmarks/bench_accuracy.py --quick      # the 8-bit rows and 4-bit RTN only

Writes benchmarks/results/bench_accuracy.json and docs/img/accuracy_minilm.svg.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fxquant
from benchmarks import minilm_data
from benchmarks.common import serialized_mb, write_json
from benchmarks.plot_bars import bar_chart_svg
from fxquant import QuantConfig as C

warnings.filterwarnings("ignore")
THREADS = 2
ROOT = Path(__file__).resolve().parent.parent
EVAL_SENTENCES, CAL_SENTENCES, CAL_BATCH = 32, 128, 16
W4 = dict(mode="weight_only", weight_bits=4, weight_granularity="per_group", group_size=128)

# (group, label, config, timed); None = the fp32 model.
ROWS: list[tuple[str, str, C | None, bool]] = [
    ("fp32", "fp32", None, True),
    ("8-bit", "dynamic (per-tensor, default)", C(), True),
    ("8-bit", "dynamic per-token", C(activation_granularity="per_token"), True),
    ("8-bit", "static (default)", C(mode="static"), True),
    ("8-bit", "weight_only int8", C(mode="weight_only"), True),
    ("SmoothQuant", "dynamic + SQ a=0.5", C(smoothquant_alpha=0.5), False),
    ("SmoothQuant", "dynamic + SQ a=0.7", C(smoothquant_alpha=0.7), True),
    ("SmoothQuant", "dynamic + SQ a=0.8", C(smoothquant_alpha=0.8), False),
    ("SmoothQuant", "dynamic per-token + SQ a=0.5",
     C(smoothquant_alpha=0.5, activation_granularity="per_token"), False),
    ("SmoothQuant", "dynamic per-token + SQ a=0.7",
     C(smoothquant_alpha=0.7, activation_granularity="per_token"), False),
    ("SmoothQuant", "static + SQ a=0.5", C(mode="static", smoothquant_alpha=0.5), False),
    ("SmoothQuant", "static + SQ a=0.7", C(mode="static", smoothquant_alpha=0.7), True),
    ("SmoothQuant", "static + SQ a=0.8", C(mode="static", smoothquant_alpha=0.8), False),
    ("4-bit", "w4 g128 RTN sym", C(**W4), True),
    ("4-bit", "w4 g128 RTN asym", C(**W4, weight_symmetric=False), False),
    ("4-bit", "w4 g128 AWQ sym", C(**W4, weight_method="awq"), False),
    ("4-bit", "w4 g128 AWQ asym", C(**W4, weight_method="awq", weight_symmetric=False), False),
    ("4-bit", "w4 g128 GPTQ sym", C(**W4, weight_method="gptq"), False),
    ("4-bit", "w4 g128 GPTQ asym", C(**W4, weight_method="gptq", weight_symmetric=False), False),
    ("4-bit", "w4 g128 GPTQ asym, no act-order",
     C(**W4, weight_method="gptq", weight_symmetric=False, gptq_act_order=False), False),
]
QUICK = {"fp32", "dynamic (per-tensor, default)", "dynamic per-token", "static (default)",
         "weight_only int8", "dynamic + SQ a=0.7", "static + SQ a=0.7", "w4 g128 RTN sym",
         "w4 g128 RTN asym"}


def interleaved_cpu_ms(fns: dict[str, Any], rounds: int = 5, reps: int = 2) -> dict[str, float]:
    """Each function's best one-thread CPU time (ms) over ``rounds`` turns of ``reps`` runs."""
    best = dict.fromkeys(fns, float("inf"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for fn in fns.values():
                fn()
            for _ in range(rounds):
                for name, fn in fns.items():
                    for _ in range(reps):
                        t0 = time.thread_time()
                        fn()
                        best[name] = min(best[name], (time.thread_time() - t0) * 1e3)
    finally:
        torch.set_num_threads(threads)
    return best


def data(tok) -> tuple[dict, list, list[str]]:
    sentences = [s for s, _ in minilm_data.extract_sentences(EVAL_SENTENCES + CAL_SENTENCES)]
    enc = tok(sentences[:EVAL_SENTENCES], padding=True, truncation=True, max_length=128,
              return_tensors="pt")
    cal = sorted(sentences[EVAL_SENTENCES:], key=lambda s: len(tok(s)["input_ids"]))
    calibration = []
    for i in range(0, len(cal), CAL_BATCH):
        c = tok(cal[i:i + CAL_BATCH], padding=True, truncation=True, max_length=128,
                return_tensors="pt")
        calibration.append((c["input_ids"], c["attention_mask"]))
    return enc, calibration, sentences


def measure(rows: list[tuple[str, str, C | None, bool]]) -> list[dict[str, Any]]:
    model, tok = minilm_data.load_minilm(minilm_data.find_minilm_dir())
    enc, calibration, sentences = data(tok)
    example = (enc["input_ids"][:1], enc["attention_mask"][:1])
    ref = minilm_data.embed(model, enc)
    ref_pairs = minilm_data.pair_similarities(ref)
    timing = {b: tok([sentences[i % EVAL_SENTENCES] for i in range(b)], padding="max_length",
                     truncation=True, max_length=128, return_tensors="pt") for b in (1, 16)}
    out, timed_models = [], {}
    for group, label, config, timed in rows:
        start = time.perf_counter()
        q = model if config is None else fxquant.quantize(
            model, example, calibration=calibration if config.calibration_needed_by else None,
            config=config)
        seconds = time.perf_counter() - start
        emb = minilm_data.embed(q, enc)
        cos = torch.nn.functional.cosine_similarity(emb, ref)
        row = {"group": group, "variant": label, "cosine_mean": round(float(cos.mean()), 5),
               "cosine_min": round(float(cos.min()), 4),
               "pair_rank_spearman": round(minilm_data.spearman(
                   minilm_data.pair_similarities(emb), ref_pairs), 4),
               "size_mb": round(serialized_mb(q), 2), "quantize_s": round(seconds, 1)}
        if timed:
            timed_models[label] = q
        out.append(row)
        print(f"  {label:36s} cosine {row['cosine_mean']:.5f}  ({seconds:.0f} s)", flush=True)
    for b, t in timing.items():
        best = interleaved_cpu_ms({label: (lambda q=q, t=t: q(t["input_ids"], t["attention_mask"]))
                                    for label, q in timed_models.items()})
        for row in out:
            row[f"cpu_ms_b{b}"] = round(best[row["variant"]], 1) if row["variant"] in best else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    rows = [r for r in ROWS if not args.quick or r[1] in QUICK]
    results = measure(rows)
    print(tabulate(results, headers="keys", tablefmt="github"))
    plot = ROOT / "docs" / "img" / "accuracy_minilm.svg"
    plot.parent.mkdir(parents=True, exist_ok=True)
    bars = [(r["variant"], r["cosine_mean"], r["group"]) for r in results if r["group"] != "fp32"]
    plot.write_text(bar_chart_svg(
        bars, title="all-MiniLM-L6-v2: sentence-embedding cosine vs fp32 (32 sentences)",
        xlabel="mean cosine (dashed: targets 0.985, 0.993, 0.995)", lo=0.93,
        marks=(0.985, 0.993, 0.995)))
    path = write_json("bench_accuracy", {"minilm": results, "eval_sentences": EVAL_SENTENCES,
                                         "calibration_sentences": CAL_SENTENCES})
    print(f"wrote {path} and {plot}")


if __name__ == "__main__":
    main()
