"""fxquant's output-channel panel kernels against fp32, fbgemm and the row kernels, per layer.

    python benchmarks/bench_panels.py            # 1 thread; GPT-2 and seed-MLP shapes, M = 1..512

For every shape (K, N) and number of rows M, interleaved (round-robin, medians):

* weight-only int8: fp32 ``F.linear``; fxquant's row-layout op (row kernels, dequantized tiles +
  BLAS from ``tile_min_rows``); the panel-layout op (``linear_int8_blocked``), AVX-512 and AVX2;
* dynamic int8: fbgemm's ``linear_dynamic`` on its packed weight; fxquant's VNNI panel kernel
  (``fxquant.kernels.dynamic``), where the CPU has AVX-512 VNNI.

Warm caches (one layer called repeatedly), so this is the kernels' arithmetic; the model-level
benchmarks (``bench_runtime.py``, ``bench_generate.py``) show what streaming the weights from
DRAM costs. Writes ``benchmarks/results/bench_panels.json``.
"""

from __future__ import annotations

import statistics
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

from benchmarks.common import cpu_model, uptime, write_json
from fxquant import cpu, numerics
from fxquant.kernels import dynamic, fbgemm, packing
from fxquant.kernels import weight_only as wo

SHAPES = ((768, 2304), (768, 3072), (3072, 768), (784, 512), (512, 10))
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 512)


def interleaved_us(fns: dict[str, Callable[[], Any]], rounds: int = 15) -> dict[str, float]:
    """Median microseconds per call of each fn, timed round-robin."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for _ in range(rounds):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


def _isa(isa: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        wo.kernel_isa(isa)
        return fn()
    return run


def candidates(k: int, n: int, m: int) -> dict[str, Callable[[], Any]]:
    torch.manual_seed(0)
    w = torch.randn(n, k)
    qw = numerics.quantize_weight(w, 8, symmetric=True, per_channel=True, pair_safe=True)
    x, bias = torch.randn(m, k), torch.randn(n)
    blocked = packing.block_int8(qw.codes)
    packed = fbgemm.pack(qw.codes, qw.scale, qw.zero_point, bias)
    fns: dict[str, Callable[[], Any]] = {
        "fp32": lambda: F.linear(x, w, bias),
        "wo rows/tiles": _isa(wo.kernel_isa(), lambda: wo.linear_int8(x, qw.codes, qw.scale, bias)),
        "wo panels AVX2": _isa("avx2", lambda: wo.linear_int8_blocked(x, blocked, qw.scale, bias)),
        "fbgemm dynamic": lambda: fbgemm.LINEAR_DYNAMIC(x, packed, False),
    }
    if "avx512f" in cpu.flags():
        fns["wo panels AVX-512"] = _isa(
            "avx512", lambda: wo.linear_int8_blocked(x, blocked, qw.scale, bias))
        layer = dynamic.pack(qw.codes, qw.scale, bias)
        fns["VNNI dynamic"] = _isa("avx512", lambda: dynamic.linear(x, layer, False))
    return fns


def main() -> None:
    torch.set_num_threads(1)
    if not wo.available():
        raise SystemExit(f"the extension is not built: {wo.status().detail}")
    default_isa = wo.kernel_isa()
    load = [uptime()]
    rows, results = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in ROWS:
            for k, n in SHAPES:
                us = interleaved_us(candidates(k, n, m))
                wo.kernel_isa(default_isa)
                if "VNNI dynamic" in us and not dynamic.available():
                    del us["VNNI dynamic"]  # AVX-512 without VNNI: the plain loop, not a kernel
                results.append({"m": m, "k": k, "n": n, "us": us})
                rows.append((m, f"{k}x{n}", *(f"{v:.1f} ({us['fp32'] / v:.2f}x)"
                                              for v in us.values())))
                print(rows[-1], flush=True)
    load.append(uptime())
    print(tabulate(rows, headers=("M", "K x N", *results[0]["us"])))
    write_json("bench_panels", {"cpu": cpu_model(), "threads": 1, "load": load,
                                "results": results})


if __name__ == "__main__":
    main()
