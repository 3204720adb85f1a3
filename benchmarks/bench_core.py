"""Core benchmark: fxquant (each mode) against fp32 and torch.ao's quantize_dynamic.

Models: the seed document's MLP (batch 1 and 32) and a GPT-2-small-shaped decoder (one-token step
at batch 1, 128-token prefill). Everything is measured in one run on this machine, 2 threads.

    python benchmarks/bench_core.py            # full run (~5 minutes)
    python benchmarks/bench_core.py --quick    # MLP only

Writes benchmarks/results/bench_core.json and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fxquant
from benchmarks.common import median_ms, rel_error, serialized_mb, top1_agreement, write_json
from tests.models import DecoderConfig, GPT2Decoder, seed_mlp


def torch_ao_dynamic(model: torch.nn.Module) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def variants(model, example, calibration):
    yield "fp32 eager", model
    for mode in ("dynamic", "static", "weight_only"):
        cfg = fxquant.QuantConfig(mode=mode)
        yield f"fxquant {mode}", fxquant.quantize(model, example, calibration=calibration,
                                                   config=cfg)
    yield "torch.ao quantize_dynamic", torch_ao_dynamic(model)


def bench_case(name, model, example, inputs_by_case, calibration, *, logits=False):
    rows = []
    built = list(variants(model, example, calibration))
    for case, inputs, unit in inputs_by_case:
        with torch.no_grad():
            ref = model(*inputs)
        base = None
        for label, m in built:
            with torch.no_grad():
                out = m(*inputs)
            ms = median_ms(lambda m=m, inputs=inputs: m(*inputs))
            base = base or ms
            n = inputs[0].shape[0] * (inputs[0].shape[1] if unit == "tokens/s" else 1)
            row = {
                "model": name, "case": case, "variant": label,
                "size_mb": round(serialized_mb(m), 2),
                "median_ms": round(ms, 3),
                "throughput": round(n / ms * 1e3, 1), "unit": unit,
                "speedup_vs_fp32": round(base / ms, 2),
                "rel_error": round(rel_error(out, ref), 5),
            }
            if logits:
                row["top1_agreement"] = round(top1_agreement(out, ref), 4)
            rows.append(row)
            print(f"  {case:22s} {label:28s} {ms:9.2f} ms", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seed MLP only")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    rows = []

    mlp = seed_mlp().eval()
    calib = [torch.randn(32, 784) for _ in range(8)]
    cases = [(f"batch {b}", (torch.randn(b, 784),), "samples/s") for b in (1, 32)]
    rows += bench_case("seed MLP 784-512-10", mlp, (torch.randn(1, 784),), cases, calib)

    if not args.quick:
        gpt = GPT2Decoder(DecoderConfig()).eval()
        g = torch.Generator().manual_seed(1)
        ids = lambda t: torch.randint(0, 50257, (1, t), generator=g)  # noqa: E731
        calib = [ids(64) for _ in range(4)]
        cases = [("one-token step, b=1", (ids(1),), "tokens/s"),
                 ("prefill 128 tokens", (ids(128),), "tokens/s")]
        rows += bench_case("GPT-2-small-shaped decoder", gpt, (ids(8),), cases, calib,
                           logits=True)

    headers = ["model", "case", "variant", "size_mb", "median_ms", "throughput", "unit",
               "speedup_vs_fp32", "rel_error", "top1_agreement"]
    print(tabulate([[r.get(h, "") for h in headers] for r in rows], headers=headers,
                   tablefmt="github"))
    path = write_json("bench_core", {"rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
