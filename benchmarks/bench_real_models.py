"""Real models: all-MiniLM-L6-v2 (real weights, real sentences) and GPT-2 small (HF, random init).

One run, this machine, 2 threads. PyTorch: fp32, fxquant (each mode), torch.ao quantize_dynamic.
ONNX Runtime: the fp32 export, fxquant's int8 export, ORT's own quantize_dynamic(per_channel=True)
on the fp32 export.

MiniLM: embedding cosine vs fp32 (mean-pooled, 32 real sentences; mean and min), ranking agreement
of sentence-pair similarities (Spearman), latency at batch 1, 4 and 16 x 128 tokens.
GPT-2 small (GPT2Config(), use_cache=False): one-token step and 128-token prefill latency, logits
top-1 agreement with fp32.

    python benchmarks/bench_real_models.py             # ~10 minutes
    python benchmarks/bench_real_models.py --skip-gpt2

Writes benchmarks/results/bench_real_models.json, and docs/img/latency_vs_batch.svg.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fxquant
from benchmarks import minilm_data
from benchmarks.common import median_ms, rel_error, serialized_mb, top1_agreement, write_json
from benchmarks.plot import line_plot_svg

warnings.filterwarnings("ignore")
THREADS = 2
ROOT = Path(__file__).resolve().parent.parent


def torch_ao_dynamic(model: torch.nn.Module) -> torch.nn.Module:
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


# --- ONNX Runtime ----------------------------------------------------------------------------


def ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_files(float_model, qmodel, example, names, folder: Path) -> dict[str, Path]:
    """fp32 export, fxquant int8 export, ORT quantize_dynamic(per_channel) of the fp32 file."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    axes = {n: {1: "seq"} for n in names}
    files = {"fp32": folder / "fp32.onnx", "fxquant int8": folder / "fxquant.onnx",
             "ORT quantize_dynamic": folder / "ort_dynamic.onnx"}
    fxquant.export_onnx(float_model, files["fp32"], example, input_names=names, dynamic_axes=axes)
    fxquant.export_onnx(qmodel, files["fxquant int8"], example, input_names=names,
                        dynamic_axes=axes)
    quantize_dynamic(str(files["fp32"]), str(files["ORT quantize_dynamic"]), per_channel=True,
                     weight_type=QuantType.QInt8)
    return files


def ort_output(sess, feeds: dict[str, np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(sess.run(None, feeds)[0])


# --- MiniLM ----------------------------------------------------------------------------------


def minilm_rows(batches: tuple[int, ...]) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    model, tok = minilm_data.load_minilm(minilm_data.find_minilm_dir())
    sentences = [s for s, _ in minilm_data.extract_sentences(64)]
    enc = tok(sentences[:32], padding=True, truncation=True, max_length=128, return_tensors="pt")
    cal = tok(sentences[32:], padding=True, truncation=True, max_length=128, return_tensors="pt")
    calibration = [(cal["input_ids"][i:i + 8], cal["attention_mask"][i:i + 8])
                   for i in range(0, 32, 8)]
    example = (enc["input_ids"][:1], enc["attention_mask"][:1])
    ref = minilm_data.embed(model, enc)
    ref_pairs = minilm_data.pair_similarities(ref)

    variants: dict[str, torch.nn.Module] = {"PyTorch fp32": model}
    for mode in ("dynamic", "static", "weight_only"):
        variants[f"PyTorch fxquant {mode}"] = fxquant.quantize(
            model, example, calibration=calibration, config=fxquant.QuantConfig(mode=mode))
    variants["PyTorch torch.ao quantize_dynamic"] = torch_ao_dynamic(model)

    def timing_inputs(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tok([sentences[i % 64] for i in range(b)], padding="max_length", truncation=True,
                  max_length=128, return_tensors="pt")
        return ids["input_ids"], ids["attention_mask"]

    rows, curves = [], {}
    folder = Path(tempfile.mkdtemp(prefix="fxq_minilm_"))
    files = onnx_files(model, variants["PyTorch fxquant dynamic"], example,
                       ["input_ids", "attention_mask"], folder)
    sessions = {f"ORT {k}": ort_session(p) for k, p in files.items()}

    def quality(emb: torch.Tensor) -> dict[str, float]:
        cos = torch.nn.functional.cosine_similarity(emb, ref)
        rho = minilm_data.spearman(minilm_data.pair_similarities(emb), ref_pairs)
        return {"cosine_mean": round(float(cos.mean()), 4),
                "cosine_min": round(float(cos.min()), 4), "pair_rank_spearman": round(rho, 4)}

    for label, m in variants.items():
        row = {"model": "all-MiniLM-L6-v2", "variant": label, "size_mb": round(serialized_mb(m), 2),
               **quality(minilm_data.embed(m, enc))}
        curve = []
        for b in batches:
            ids, mask = timing_inputs(b)
            ms = median_ms(lambda m=m, ids=ids, mask=mask: m(ids, mask), reps=15)
            row[f"ms_b{b}"] = round(ms, 2)
            curve.append(ms)
        curves[label] = curve
        rows.append(row)
        print(f"  {label:36s} done", flush=True)
    for label, sess in sessions.items():
        feeds = {k: enc[k].numpy() for k in ("input_ids", "attention_mask")}
        hidden = ort_output(sess, feeds)
        emb = minilm_data.mean_pool(hidden, enc["attention_mask"])
        path = files[label.removeprefix("ORT ")]
        row = {"model": "all-MiniLM-L6-v2", "variant": label,
               "size_mb": round(path.stat().st_size / 1e6, 2), **quality(emb)}
        curve = []
        for b in batches:
            ids, mask = timing_inputs(b)
            f = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
            ms = median_ms(lambda s=sess, f=f: s.run(None, f), reps=15)
            row[f"ms_b{b}"] = round(ms, 2)
            curve.append(ms)
        curves[label] = curve
        rows.append(row)
        print(f"  {label:36s} done", flush=True)
    for row in rows:
        base = "PyTorch fp32" if row["variant"].startswith("PyTorch") else "ORT fp32"
        ref_row = next(r for r in rows if r["variant"] == base)
        row["speedup_b1"] = round(ref_row[f"ms_b{batches[0]}"] / row[f"ms_b{batches[0]}"], 2)
    return rows, curves


# --- GPT-2 small -----------------------------------------------------------------------------


def gpt2_rows() -> list[dict[str, Any]]:
    import transformers

    cfg = transformers.GPT2Config(use_cache=False)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    g = torch.Generator().manual_seed(1)

    def ids(t: int, b: int = 1) -> torch.Tensor:
        return torch.randint(0, cfg.vocab_size, (b, t), generator=g)

    example = (ids(8),)
    calibration = [(ids(64),) for _ in range(4)]
    variants: dict[str, torch.nn.Module] = {"PyTorch fp32": model}
    for mode in ("dynamic", "static"):
        variants[f"PyTorch fxquant {mode}"] = fxquant.quantize(
            model, example, calibration=calibration, config=fxquant.QuantConfig(mode=mode))
    variants["PyTorch torch.ao quantize_dynamic (as is)"] = torch_ao_dynamic(model)
    cases = {"one-token step": ids(1), "prefill 128": ids(128)}
    refs = {k: model(v).logits for k, v in cases.items()}
    rows = []
    for label, m in variants.items():
        row: dict[str, Any] = {"model": "GPT-2 small", "variant": label,
                               "size_mb": round(serialized_mb(m), 1)}
        for case, x in cases.items():
            with torch.no_grad():
                out = m(x).logits
            row[f"ms {case}"] = round(median_ms(lambda m=m, x=x: m(x), reps=15), 2)
            row[f"top1 {case}"] = round(top1_agreement(out, refs[case]), 4)
            row[f"rel_err {case}"] = round(rel_error(out, refs[case]), 4)
        rows.append(row)
        print(f"  {label:44s} done", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="fxq_gpt2_"))
    files = onnx_files(model, variants["PyTorch fxquant dynamic"], example, ["input_ids"], folder)
    for label, path in files.items():
        sess = ort_session(path)
        row = {"model": "GPT-2 small", "variant": f"ORT {label}",
               "size_mb": round(path.stat().st_size / 1e6, 1)}
        for case, x in cases.items():
            feeds = {"input_ids": x.numpy()}
            out = ort_output(sess, feeds)
            row[f"ms {case}"] = round(median_ms(lambda s=sess, f=feeds: s.run(None, f), reps=15), 2)
            row[f"top1 {case}"] = round(top1_agreement(out, refs[case]), 4)
            row[f"rel_err {case}"] = round(rel_error(out, refs[case]), 4)
        rows.append(row)
        print(f"  ORT {label:40s} done", flush=True)
    for row in rows:
        base = "PyTorch fp32" if row["variant"].startswith("PyTorch") else "ORT fp32"
        ref_row = next(r for r in rows if r["variant"] == base)
        for case in cases:
            row[f"speedup {case}"] = round(ref_row[f"ms {case}"] / row[f"ms {case}"], 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-gpt2", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    batches = (1, 4, 16)
    print("MiniLM (real weights)", flush=True)
    minilm, curves = minilm_rows(batches)
    print(tabulate(minilm, headers="keys", tablefmt="github"))
    gpt2 = [] if args.skip_gpt2 else gpt2_rows()
    if gpt2:
        print(tabulate(gpt2, headers="keys", tablefmt="github"))
    plot = ROOT / "docs" / "img" / "latency_vs_batch.svg"
    plot.parent.mkdir(parents=True, exist_ok=True)
    picked = {k: v for k, v in curves.items() if k in (
        "PyTorch fp32", "PyTorch fxquant dynamic", "PyTorch torch.ao quantize_dynamic",
        "ORT fp32", "ORT fxquant int8", "ORT ORT quantize_dynamic")}
    plot.write_text(line_plot_svg(
        list(batches), picked, title="all-MiniLM-L6-v2, 128 tokens: latency vs batch size",
        xlabel="batch size", ylabel="median latency (ms)"))
    path = write_json("bench_real_models", {"minilm": minilm, "gpt2": gpt2,
                                            "minilm_latency_curves_ms": curves,
                                            "batches": list(batches)})
    print(f"wrote {path} and {plot}")


if __name__ == "__main__":
    main()
