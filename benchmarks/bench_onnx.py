"""ONNX benchmark: fxquant's int8 files against ONNX Runtime's own quantizer, in ONNX Runtime.

For each model, one run on this machine (ONNX Runtime, CPU, intra_op_num_threads=2):

    (a) the fp32 export (TorchScript exporter, opset 14, dynamic batch)
    (b) fxquant.export_onnx of fxquant's dynamic model (defaults: 8-bit per-channel weights with
        pair-safe scales, written as int8 in exactly ONNX Runtime's DynamicQuantizeLinear +
        MatMulInteger pattern; no AVX2 saturation possible)
    (b') the same with QuantConfig(weight_bits=7)
    (b'') fxquant.export_onnx of fxquant's static model (QDQ, calibrated, same calibration as d)
    (c) onnxruntime.quantization.quantize_dynamic(fp32, per_channel=True)
    (c') the same with reduce_range=True (7-bit weights: (b)'s scheme, ORT's own AVX2 advice)
    (d) onnxruntime.quantization.quantize_static(fp32, QDQ, MinMax)

Models: the seed MLP (784-512-10) at batch 32 and 1, and a BERT-base-shaped encoder (12 layers,
d=768, 30522-token vocabulary) at batch 1 x 128 tokens.

Columns: file size, median latency, speedup vs (a), error vs (a)'s output (relative RMS,
||y - y_fp32|| / ||y_fp32||, and max abs), and the integer kernels ONNX Runtime fused the file
into (from SessionOptions.optimized_model_filepath) -- proof that the int8 pattern was recognised.

    python benchmarks/bench_onnx.py            # full run (~4 minutes)
    python benchmarks/bench_onnx.py --quick    # MLP only

Writes benchmarks/results/bench_onnx.json (bench_onnx_quick.json with --quick) and prints the
tables.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    quantize_dynamic,
    quantize_static,
)
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fxquant
from benchmarks.common import write_json
from tests.models import BertEncoder, EncoderConfig, make_inputs, seed_mlp

THREADS = 2
INT8_KERNELS = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm", "QLinearMatMul",
                "QLinearConv", "MatMulInteger", "MatMulNBits", "QAttention")


# --- files ------------------------------------------------------------------------------------


def export_fp32(model: torch.nn.Module, example: tuple, names: list[str], path: Path) -> None:
    axes = {n: {0: "batch"} for n in [*names, "output"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, str(path), dynamo=False, opset_version=14,
                          input_names=names, output_names=["output"], dynamic_axes=axes)


class Batches(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.items = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def make_files(model, example, names, calibration, folder: Path) -> dict[str, Path]:
    """Every variant's file; fp32 first (ONNX Runtime's quantizers start from it)."""
    files = {"(a) fp32": folder / "fp32.onnx"}
    export_fp32(model, example, names, files["(a) fp32"])
    for label, mode, bits in (("(b) fxquant dynamic", "dynamic", 8),
                              ("(b') fxquant dynamic, 7-bit weights", "dynamic", 7),
                              ("(b'') fxquant static", "static", 8)):
        qmodel = fxquant.quantize(model, example, calibration=calibration,
                                  config=fxquant.QuantConfig(mode=mode, weight_bits=bits))
        files[label] = folder / f"fxquant_{mode}_{bits}bit.onnx"
        fxquant.export_onnx(qmodel, files[label], example)
    fp32 = str(files["(a) fp32"])
    files["(c) ORT quantize_dynamic"] = folder / "ort_dynamic.onnx"
    quantize_dynamic(fp32, files["(c) ORT quantize_dynamic"], per_channel=True)
    files["(c') ORT quantize_dynamic, reduce_range"] = folder / "ort_dynamic_rr.onnx"
    quantize_dynamic(fp32, files["(c') ORT quantize_dynamic, reduce_range"], per_channel=True,
                     reduce_range=True)
    files["(d) ORT quantize_static QDQ"] = folder / "ort_static.onnx"
    feeds = [{n: t.numpy() for n, t in zip(names, batch, strict=True)} for batch in calibration]
    quantize_static(fp32, files["(d) ORT quantize_static QDQ"], Batches(feeds),
                    quant_format=QuantFormat.QDQ, calibrate_method=CalibrationMethod.MinMax)
    return files


# --- measurement ------------------------------------------------------------------------------


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def fused_kernels(path: Path, folder: Path) -> str:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    found = [f"{op} x{ops[op]}" for op in INT8_KERNELS if ops[op]]
    return ", ".join(found) or "none (float)"


def latencies(sessions: dict[str, ort.InferenceSession], feeds: dict[str, np.ndarray],
              reps: int, rounds: int) -> dict[str, float]:
    """Median latency in ms. Variants are interleaved round by round so that a busy moment on
    the machine is shared by all of them instead of penalising one."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feeds)
    for _ in range(rounds):
        for label, s in sessions.items():
            for _ in range(reps):
                start = time.perf_counter()
                s.run(None, feeds)
                times[label].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def bench_model(name: str, files: dict[str, Path], cases: list[tuple[str, dict, int, int]],
                folder: Path) -> list[dict[str, Any]]:
    sessions = {label: session(path) for label, path in files.items()}
    kernels = {label: fused_kernels(path, folder) for label, path in files.items()}
    rows = []
    for case, feeds, reps, rounds in cases:
        outputs = {label: s.run(None, feeds)[0] for label, s in sessions.items()}
        ref = outputs["(a) fp32"].astype(np.float64)
        ms = latencies(sessions, feeds, reps, rounds)
        for label, path in files.items():
            y = outputs[label].astype(np.float64)
            rows.append({
                "model": name, "case": case, "variant": label,
                "size_mb": path.stat().st_size / 1e6,
                "size_ratio": files["(a) fp32"].stat().st_size / path.stat().st_size,
                "median_ms": ms[label],
                "speedup": ms["(a) fp32"] / ms[label],
                "rel_rms_error": float(np.linalg.norm(y - ref) / np.linalg.norm(ref)),
                "max_abs_error": float(np.abs(y - ref).max()),
                "int8_kernels": kernels[label],
            })
    return rows


# --- models -----------------------------------------------------------------------------------


def mlp_cases(folder: Path) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model = seed_mlp().eval()
    example = make_inputs("mlp", 32, seed=0)
    calibration = [make_inputs("mlp", 32, seed=s) for s in range(100, 108)]
    files = make_files(model, example, ["input"], calibration, folder)
    cases = [("batch 32", {"input": make_inputs("mlp", 32, seed=1)[0].numpy()}, 20, 60),
             ("batch 1", {"input": make_inputs("mlp", 1, seed=2)[0].numpy()}, 50, 60)]
    return bench_model("seed MLP", files, cases, folder)


def bert_cases(folder: Path) -> list[dict[str, Any]]:
    cfg = EncoderConfig()  # BERT-base: 12 layers, d=768, 3072 MLP, 30522 vocabulary
    model = BertEncoder(cfg, seed=0).eval()
    example = make_inputs("bert", 1, 128, cfg=cfg, seed=0)
    calibration = [make_inputs("bert", 1, 128, cfg=cfg, seed=s) for s in range(100, 104)]
    files = make_files(model, example, ["input_ids", "attention_mask"], calibration, folder)
    ids, mask = make_inputs("bert", 1, 128, cfg=cfg, seed=1)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    return bench_model("BERT-base encoder", files, [("1 x 128 tokens", feeds, 1, 15)], folder)


# --- report -----------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]], fmt: str = "simple_outline") -> str:
    body = [(r["model"], r["case"], r["variant"], f"{r['size_mb']:.2f}",
             f"{r['size_ratio']:.2f}x", f"{r['median_ms']:.3f}", f"{r['speedup']:.2f}x",
             f"{r['rel_rms_error']:.2e}", f"{r['max_abs_error']:.2e}", r["int8_kernels"])
            for r in rows]
    headers = ("model", "case", "variant", "MB", "smaller", "median ms", "speedup vs fp32",
               "rel. RMS err vs fp32", "max abs err", "ONNX Runtime int8 kernels")
    return tabulate(body, headers=headers, tablefmt=fmt)


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """fxquant vs ONNX Runtime's quantizer for the same scheme: speed, accuracy, size."""
    pairs = (("(b) fxquant dynamic", "(c) ORT quantize_dynamic"),
             ("(b) fxquant dynamic", "(c') ORT quantize_dynamic, reduce_range"),
             ("(b'') fxquant static", "(d) ORT quantize_static QDQ"))
    lines = []
    for case in dict.fromkeys((r["model"], r["case"]) for r in rows):
        by = {r["variant"]: r for r in rows if (r["model"], r["case"]) == case}
        for ours, theirs in pairs:
            a, b = by[ours], by[theirs]
            lines.append(
                f"{case[0]}, {case[1]}: {ours} vs {theirs}: latency "
                f"{a['median_ms'] / b['median_ms']:.2f}x theirs, error "
                f"{a['rel_rms_error']:.2e} vs {b['rel_rms_error']:.2e}, "
                f"{a['size_ratio']:.2f}x smaller than fp32")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="seed MLP only")
    args = parser.parse_args(argv)
    logging.getLogger("root").setLevel(logging.ERROR)  # ORT quantizer's pre-processing advice
    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        steps: list[tuple[str, Callable[[Path], list]]] = [("mlp", mlp_cases)]
        if not args.quick:
            steps.append(("bert", bert_cases))
        for name, step in steps:
            (folder / name).mkdir()
            rows += step(folder / name)
    print(table(rows))
    print()
    for line in targets(rows):
        print(line)
    elapsed = time.perf_counter() - started
    # --quick writes apart, so a quick check never replaces the full run's results.
    payload = {"ort": ort.__version__, "intra_op_num_threads": THREADS, "elapsed_s": elapsed,
               "rows": rows}
    path = write_json("bench_onnx_quick" if args.quick else "bench_onnx", payload)
    print(f"\n{elapsed:.0f} s; wrote {path}")
    print("\nMarkdown:\n")
    print(table(rows, fmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
