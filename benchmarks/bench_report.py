"""The per-layer error report and mixed precision by budget, on two small trained models.

1. GPT-2 (tiny config) trained in fp32 on synthetic token sequences (bench_qat's progressions),
   quantized with 3-bit weights (dynamic int8 activations), exported to ONNX: the per-layer error
   report (fp32 vs fake quant vs int8 vs ONNX Runtime), its table, JSON and bar chart
   (docs/img/error_report_gpt2.svg).
2. Mixed precision by budget: ``quantize_to_target`` on the digits MLP with 2-bit weights
   (target: top-1 agreement with fp32 on calibration images; kept layers in float or at 8 bits)
   and on the GPT-2 with 3- and 2-bit weights (target: mean cosine similarity of the logits; kept
   layers at 8 bits); test-set scores of each result.

    python benchmarks/bench_report.py          # ~2 minutes on 2 loaded cores

Writes benchmarks/results/bench_report.json and docs/img/error_report_gpt2.svg, prints tables.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fxquant
from benchmarks.bench_qat import (
    DigitsSettings,
    GPT2Settings,
    accuracy,
    digits_data,
    digits_mlp,
    next_token_accuracy,
    progressions,
    train,
    trained_gpt2,
    uptime,
)
from benchmarks.common import write_json

DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


REPORT_BITS = 3


def gpt2_report(model: nn.Module, s: GPT2Settings) -> dict[str, Any]:
    calibration = [progressions(8, s, seed=20_000 + i) for i in range(4)]
    config = fxquant.QuantConfig(weight_bits=REPORT_BITS)
    q = fxquant.quantize(model, {"input_ids": calibration[0]}, config=config)
    q.config.use_cache = False  # the export takes tensor outputs only (no KV-cache object)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gpt2.onnx"
        fxquant.export_onnx(q, path, (calibration[0],))
        start = time.perf_counter()
        report = fxquant.error_report(model, q, [(ids,) for ids in calibration], onnx_path=path)
        seconds = time.perf_counter() - start
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    plot = report.plot(DOCS_IMG / "error_report_gpt2.svg")
    print(report.table())
    return {"config": config.to_dict(), "seconds": seconds, "plot": str(plot.name),
            "table": report.table(), "report": report.to_dict()}


def _summary(result: fxquant.MixedPrecisionResult, seconds: float) -> dict[str, Any]:
    print(result.table(), end="\n\n")
    return {"target": result.target.describe(), "keep": result.keep, "seconds": seconds,
            "met": result.met, "kept": [k.name for k in result.kept], "trials": result.trials,
            "sensitivities": result.sensitivities, "table": result.table()}


def mixed_digits() -> list[dict[str, Any]]:
    """The digits MLP with 2-bit weights: top-1 agreement with fp32 >= 0.9 on calibration
    images, the kept layers in float or at 8 bits; test-set accuracy of each result."""
    s = DigitsSettings()
    xtr, xte, ytr, yte = digits_data()
    model = train(digits_mlp(s.seed), xtr, ytr, s.fp32_epochs, s.lr, s.batch, s.seed)
    calibration = [(xtr[i:i + 128],) for i in range(0, 512, 128)]
    config = fxquant.QuantConfig(weight_bits=2)
    target = fxquant.AccuracyTarget("top1_agreement", 0.9)
    all_q = fxquant.quantize(model, calibration[0], config=config)
    out = []
    for keep in ("float", 8):
        start = time.perf_counter()
        result = fxquant.quantize_to_target(model, calibration[0], target, batches=calibration,
                                            config=config, keep=keep)
        row = _summary(result, time.perf_counter() - start)
        row["test_accuracy"] = {"fp32": 100 * accuracy(model, xte, yte),
                                "all_quantized": 100 * accuracy(all_q, xte, yte),
                                "mixed": 100 * accuracy(result.model, xte, yte)}
        out.append(row)
    return out


def mixed_gpt2(model: nn.Module, s: GPT2Settings) -> list[dict[str, Any]]:
    """The GPT-2 with 3-bit and 2-bit weights, kept layers at 8 bits, targets on the logits'
    cosine similarity; next-token accuracy on held-out sequences."""
    calibration = [(progressions(8, s, seed=20_000 + i),) for i in range(4)]
    test = progressions(64, s, seed=10_000)
    out = []
    for bits, threshold in ((3, 0.998), (2, 0.99)):
        config = fxquant.QuantConfig(weight_bits=bits)
        target = fxquant.AccuracyTarget("cosine", threshold)
        start = time.perf_counter()
        result = fxquant.quantize_to_target(model, calibration[0], target, batches=calibration,
                                            config=config, keep=8)
        row = _summary(result, time.perf_counter() - start)
        all_q = fxquant.quantize(model, calibration[0], config=config)
        row["weight_bits"] = bits
        row["next_token_accuracy"] = {"fp32": next_token_accuracy(model, test),
                                      "all_quantized": next_token_accuracy(all_q, test),
                                      "mixed": next_token_accuracy(result.model, test)}
        out.append(row)
    return out


def main() -> None:
    warnings.simplefilter("ignore")
    before = uptime()
    s = GPT2Settings()
    model = trained_gpt2(s)
    report = gpt2_report(model, s)
    digits = mixed_digits()
    gpt2 = mixed_gpt2(model, s)
    after = uptime()
    path = write_json("bench_report", {"uptime_before": before, "uptime_after": after,
                                       "gpt2_error_report": report, "mixed_digits": digits,
                                       "mixed_gpt2": gpt2})
    print(f"\nwrote {path}; uptime before: {before}; after: {after}")


if __name__ == "__main__":
    main()
