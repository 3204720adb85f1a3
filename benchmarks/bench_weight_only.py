"""Weight-only linear kernels: fp32 vs fxquant's int8 / int4 C++ kernels vs the alternatives.

One ``nn.Linear``-shaped layer at a time (GPT-2 small: 768x768, 768x3072, 3072x768; Llama-ish:
1024x1024, 1024x2816; shapes are in_features x out_features), x of M rows (M=1 is one decode
step, M=128 a prefill chunk), at 1 and 2 threads. Candidates:

* ``fp32``: ``F.linear`` with the float weight (MKL);
* ``fxq_wo_2gemm``: today's ``fxquant.ops.linear_weight_only`` (two 7-bit int8 fbgemm GEMMs);
* ``int8``: ``fxquant.kernels.weight_only.linear_int8`` (per-channel int8, the C++ kernel);
* ``int4_g128``: ``linear_int4`` (symmetric 4-bit, groups of 128);
* ``fp16_fbgemm``: fbgemm's fp16-weight GEMM (``quantized::linear_dynamic_fp16``), a peer;
* ``int8_fallback``: the PyTorch fallback used when the extension is unavailable.

Timing is interleaved: every round times a batch of calls of each candidate in turn (rotating the
order), and the table reports the median per-call time over the rounds, so drift and other load on
the machine hit every candidate alike (the JSON also keeps the 10th percentile, the cost of a call
that other processes left alone: on a shared 2-core machine the 2-thread medians suffer first,
since an OpenMP region waits for its slowest thread). A second section times the int8 and int4
kernels' two paths (row kernels vs tiled BLAS) around the M threshold; a third ("streaming") calls
each of many copies of a layer in turn (~128 MB of int8 weights), so weights come from L3 or memory
as in a model's decode step instead of staying in L2. Load average and CPU model go into the JSON.

    python benchmarks/bench_weight_only.py              # ~3 minutes on 2 cores
    python benchmarks/bench_weight_only.py --quick      # fewer rounds, M=1 and 32 only

Writes benchmarks/results/bench_weight_only.json and prints tables.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import cpu_model, rel_error, uptime, write_json
from fxquant import cpu, numerics, ops
from fxquant.kernels import packing
from fxquant.kernels import weight_only as wo

SHAPES = ((768, 768), (768, 3072), (3072, 768), (1024, 1024), (1024, 2816))
M_VALUES = (1, 8, 32, 128)
THRESHOLD_SHAPES = ((768, 3072), (3072, 768), (1024, 2816))
THRESHOLD_M = (8, 12, 16, 24, 32, 64)
STREAMING_SHAPES = ((768, 3072), (1024, 2816))
STREAMING_INT8_BYTES = 128 << 20  # int8 copies of a layer per sweep: far past L2, like a model
BATCH_S = 5e-4  # each timed batch of calls lasts about this long: short, so few are preempted


def load_snapshot() -> dict:
    return {"uptime": uptime(), "loadavg": list(os.getloadavg())}


def interleaved_times(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Microseconds per call of each candidate in every round, the rounds alternating candidates
    in a rotating order."""
    inner = {}
    for name, fn in fns.items():
        fn()
        t0 = time.perf_counter()
        fn()
        inner[name] = max(1, int(BATCH_S / max(time.perf_counter() - t0, 1e-7)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, n = fns[name], inner[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t0) / n)
    return {name: [t * 1e6 for t in v] for name, v in times.items()}


def interleaved_medians(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    return {name: statistics.median(v) for name, v in interleaved_times(fns, rounds).items()}


def p10(values: list[float]) -> float:
    """The 10th percentile: what a call costs when the machine's other load leaves it alone."""
    return sorted(values)[len(values) // 10]


def layer(k: int, n: int) -> dict:
    """One layer's weights in every candidate's format (GPT-2-like init: std 0.02)."""
    w, b = torch.randn(n, k) * 0.02, torch.randn(n) * 0.02
    q8 = numerics.quantize_weight(w, 8, symmetric=True, per_channel=True)
    q4 = packing.quantize_groupwise(w, 4, 128, symmetric=True)
    return {
        "w": w, "b": b, "q8": q8, "packed4": packing.pack_int4(q4.codes), "q4": q4,
        "fp16": torch.ops.quantized.linear_prepack_fp16(w, b),
    }


def candidates(lay: dict, x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    w, b, q8, q4, packed4 = lay["w"], lay["b"], lay["q8"], lay["q4"], lay["packed4"]
    return {
        "fp32": lambda: F.linear(x, w, b),
        "fxq_wo_2gemm": lambda: ops.linear_weight_only(x, q8.codes, q8.scale, q8.zero_point, b),
        "int8": lambda: wo.linear_int8(x, q8.codes, q8.scale, b),
        "int4_g128": lambda: wo.linear_int4(x, packed4, q4.scale, q4.zero_point, 128, b),
        "fp16_fbgemm": lambda: torch.ops.quantized.linear_dynamic_fp16(x, lay["fp16"]),
        "int8_fallback": lambda: wo.linear_int8_reference(x, q8.codes, q8.scale, b),
    }


def main_section(threads: int, shapes, m_values, rounds: int) -> list[dict]:
    rows = []
    for k, n in shapes:
        lay = layer(k, n)
        for m in m_values:
            x = torch.randn(m, k)
            fns = candidates(lay, x)
            ref = fns["fp32"]()
            times = interleaved_times(fns, rounds)
            med = {name: statistics.median(v) for name, v in times.items()}
            for name, us in med.items():
                rows.append({
                    "threads": threads, "shape": f"{k}x{n}", "M": m, "candidate": name,
                    "median_us": round(us, 1), "speedup_vs_fp32": round(med["fp32"] / us, 2),
                    "p10_us": round(p10(times[name]), 1),
                    "rel_error_vs_fp32": rel_error(fns[name](), ref),
                })
    return rows


def threshold_section(threads: int, rounds: int) -> list[dict]:
    """Row kernels vs tiled BLAS for each op around the shipped thresholds."""
    rows = []
    for k, n in THRESHOLD_SHAPES:
        lay = layer(k, n)
        for m in THRESHOLD_M:
            x = torch.randn(m, k)
            fns = {"fp32": candidates(lay, x)["fp32"]}
            for bits, op in ((8, "int8"), (4, "int4_g128")):
                for path, rows_min in (("rows", 1 << 30), ("tiled", 0)):
                    fns[f"{op}_{path}"] = _with_threshold(bits, rows_min, candidates(lay, x)[op])
            med = interleaved_medians(fns, rounds)
            rows.append({"threads": threads, "shape": f"{k}x{n}", "M": m,
                         **{name: round(us, 1) for name, us in med.items()}})
    return rows


def streaming_section(threads: int, rounds: int) -> list[dict]:
    """One call on each of many copies of a layer per sweep, as a decode step walks a model's
    layers: the weights come from L3 or memory, not from the L2 a repeated call keeps them in."""
    rows = []
    for k, n in STREAMING_SHAPES:
        lay = layer(k, n)
        copies = max(2, STREAMING_INT8_BYTES // (k * n))
        # Fresh tensors per copy (clone), so no two calls read the same memory.
        layers = [{**lay, "w": lay["w"].clone(), "packed4": lay["packed4"].clone(),
                   "q8": numerics.QuantizedWeight(lay["q8"].codes.clone(), lay["q8"].scale,
                                                  lay["q8"].zero_point, 0),
                   "fp16": torch.ops.quantized.linear_prepack_fp16(lay["w"], lay["b"])}
                  for _ in range(copies)]
        for m in (1, 8):
            x = torch.randn(m, k)
            per_layer = [candidates(one, x) for one in layers]
            fns = {name: _sweep([c[name] for c in per_layer])
                   for name in ("fp32", "int8", "int4_g128", "fp16_fbgemm")}
            times = {name: [t / copies for t in v]
                     for name, v in interleaved_times(fns, rounds).items()}
            med = {name: statistics.median(v) for name, v in times.items()}
            rows += [{"threads": threads, "shape": f"{k}x{n}", "M": m, "copies": copies,
                      "candidate": name, "median_us_per_layer": round(us, 1),
                      "p10_us_per_layer": round(p10(times[name]), 1),
                      "speedup_vs_fp32": round(med["fp32"] / us, 2)} for name, us in med.items()]
        del layers, per_layer
    return rows


def _sweep(calls: list[Callable[[], torch.Tensor]]) -> Callable[[], None]:
    def run() -> None:
        for call in calls:
            call()

    return run


def _with_threshold(bits: int, rows_min: int, fn: Callable[[], torch.Tensor]):
    def run() -> torch.Tensor:
        previous = wo.tile_min_rows(bits, rows_min)
        try:
            return fn()
        finally:
            wo.tile_min_rows(bits, previous)

    return run


def print_main(rows: list[dict]) -> None:
    table: dict[tuple, dict] = {}
    for r in rows:
        cell = f"{r['median_us']:.0f}" + ("" if r["candidate"] == "fp32"
                                         else f" ({r['speedup_vs_fp32']:.2f}x)")
        table.setdefault((r["threads"], r["shape"], r["M"]), {})[r["candidate"]] = cell
    names = list(dict.fromkeys(r["candidate"] for r in rows))
    body = [[*key, *(v.get(c, "") for c in names)] for key, v in table.items()]
    print(tabulate(body, headers=["threads", "KxN", "M", *[f"{c} us" for c in names]],
                   tablefmt="github"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, M=1 and 32 only")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    if not wo.available():
        raise SystemExit(f"the weight-only extension is not available: {wo.status().detail}")
    rounds = args.rounds or (21 if args.quick else 101)
    m_values = (1, 32) if args.quick else M_VALUES
    torch.manual_seed(0)
    before = load_snapshot()
    main_rows, threshold_rows, streaming_rows = [], [], []
    with torch.no_grad():
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            main_rows += main_section(threads, SHAPES, m_values, rounds)
            if not args.quick:
                threshold_rows += threshold_section(threads, rounds)
                streaming_rows += streaming_section(threads, max(5, rounds // 5))
    after = load_snapshot()
    print_main(main_rows)
    for extra in (threshold_rows, streaming_rows):
        if extra:
            print()
            print(tabulate(extra, headers="keys", tablefmt="github"))
    path = write_json("bench_weight_only", {
        "cpu_model": cpu_model(),
        "cpu_flags": sorted(cpu.flags() & {"avx2", "fma", "avx512f", "avx512_vnni", "amx_int8"}),
        "load_before": before, "load_after": after, "rounds": rounds,
        "tile_min_rows": {"int8": wo.tile_min_rows(8), "int4": wo.tile_min_rows(4)},
        "rows": main_rows, "threshold_rows": threshold_rows, "streaming_rows": streaming_rows,
    })
    print(f"load before: {before['uptime']}\nload after:  {after['uptime']}\nwrote {path}")


if __name__ == "__main__":
    main()
