"""Greedy generation in ONNX Runtime: decode tokens/s of fxquant's decoder file against the others.

    python benchmarks/bench_onnx_generate.py             # Llama-shaped + GPT-2 small, 2 threads
    python benchmarks/bench_onnx_generate.py --models llama --reps 3 --no-genai

Batch 1, a 16-token prompt, 64 new greedy tokens with the KV cache, 2 threads. Decode tokens/s =
64 / (t(65 new tokens) - t(1 new token)): the prefill cancels. Candidates, interleaved in every
repetition (medians over repetitions):

    fxquant int8 ONNX         export_onnx of fxquant.quantize(model) (dynamic int8), ort_generate
    ORT quantize_dynamic      onnxruntime.quantization.quantize_dynamic on the fp32 export (same
                              decoder layout), ort_generate
    ORT fp32                  export_onnx of the float model, ort_generate
    fxquant int8 PyTorch      qmodel.generate
    HF fp32 PyTorch           model.generate
    genai int8 / int4         onnxruntime-genai's model builder (-p int8 / int4 -e cpu) on the same
                              weights saved with save_pretrained (and a word-level tokenizer made
                              here: the builder needs one), run by og.Generator; when installed

Accuracy: teacher-forced top-1 agreement with HF fp32 -- each candidate is fed HF fp32's own 64
greedy tokens one step at a time and its argmax compared with fp32's at every step. (Free-running
greedy agreement is also recorded, but on random weights logits are nearly flat and one early
near-tie sends a sequence elsewhere, so it measures luck more than accuracy.) Weights are random
(no downloads). Results: JSON in
benchmarks/results/bench_onnx_generate.json with the machine's load (uptime) and CPU model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fxquant
from benchmarks.bench_generate import build  # the same GPT-2 small and Llama-shaped models
from benchmarks.common import cpu_model, uptime, write_json
from fxquant.onnx_export import DecoderSession, ort_generate

PROMPT, NEW = 16, 64
Generate = Callable[[int], np.ndarray]  # new tokens -> the generated ids [1, PROMPT + new]
Score = Callable[[np.ndarray], np.ndarray]  # a sequence [1, PROMPT + NEW] -> the NEW argmaxes
Candidate = tuple[Generate, Score, float]  # and the file size in MB


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort(path: Path, ids: torch.Tensor, threads: int, size: float) -> Candidate:
    decoder = DecoderSession.of(_session(path, threads))

    def score(seq: np.ndarray) -> np.ndarray:
        past, mask, preds = decoder.empty_past(1), np.ones((1, PROMPT), np.int64), []
        new = seq[:, :PROMPT]
        for t in range(NEW):
            logits, past = decoder.step(new, mask, past)
            preds.append(int(logits[0].argmax()))
            new = seq[:, PROMPT + t:PROMPT + t + 1]
            mask = np.ones((1, mask.shape[1] + 1), np.int64)
        return np.array(preds)

    return (lambda new: ort_generate(decoder, ids.numpy(), max_new_tokens=new)), score, size


def _torch(model: torch.nn.Module, ids: torch.Tensor, size: float) -> Candidate:
    def run(new: int) -> np.ndarray:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                 pad_token_id=0)
        return out.numpy()

    def score(seq: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = model(input_ids=torch.from_numpy(seq[:, :-1])).logits
        return logits[0, PROMPT - 1:].argmax(-1).numpy()

    return run, score, size


def _mb(*paths: Path) -> float:
    return sum(p.stat().st_size for p in paths if p.exists()) / 1e6


def onnx_candidates(model, qmodel, ids, folder: Path, threads: int) -> dict[str, Candidate]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    example = {"input_ids": ids.repeat(2, 1), "attention_mask": torch.ones(2, PROMPT, dtype=int)}
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp32 = fxquant.export_onnx(model, folder / "fp32.onnx", example).path
    int8 = fxquant.export_onnx(qmodel, folder / "fxquant.onnx", example).path
    ort_q = folder / "ort_dynamic.onnx"
    quantize_dynamic(str(fp32), str(ort_q), weight_type=QuantType.QInt8)
    out["fxquant int8 ONNX"] = _ort(int8, ids, threads, _mb(int8))
    out["ORT quantize_dynamic"] = _ort(ort_q, ids, threads, _mb(ort_q))
    out["ORT fp32"] = _ort(fp32, ids, threads, _mb(fp32))
    return out


def _tokenizer(vocab: int, folder: Path) -> None:
    """A word-level tokenizer of ``vocab`` tokens (the genai builder saves one with the model)."""
    import transformers as T
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", bos_token="t1",
                              eos_token="t2", pad_token="t0").save_pretrained(folder)


def genai_candidates(model, ids, folder: Path, threads: int) -> dict[str, Candidate]:
    try:
        import onnxruntime_genai as og
    except ImportError as exc:
        print(f"onnxruntime-genai unavailable: {exc}", file=sys.stderr)
        return {}
    source = folder / "hf"
    model.save_pretrained(source)
    _tokenizer(model.config.vocab_size, source)
    out = {}
    for precision in ("int8", "int4"):
        target = folder / f"genai_{precision}"
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source),
               "-o", str(target), "-p", precision, "-e", "cpu", "-c", str(folder / "cache")]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"genai builder {precision} failed: {done.stderr[-2000:]}", file=sys.stderr)
            continue
        config_path = target / "genai_config.json"
        config = json.loads(config_path.read_text())
        config["model"]["decoder"]["session_options"].update(
            intra_op_num_threads=threads, inter_op_num_threads=1)
        config_path.write_text(json.dumps(config, indent=2))
        og_model = og.Model(str(target))
        out[f"genai {precision}"] = (*_genai(og, og_model, ids),
                                     _mb(*target.glob("model.onnx*")))
    return out


def _genai(og: Any, og_model: Any, ids: torch.Tensor) -> tuple[Generate, Score]:
    def generator(length: int) -> Any:
        params = og.GeneratorParams(og_model)
        params.set_search_options(max_length=length, min_length=length, do_sample=False)
        return og.Generator(og_model, params)

    def score(seq: np.ndarray) -> np.ndarray:
        gen, preds = generator(PROMPT + NEW), []
        gen.append_tokens(seq[:, :PROMPT].astype(np.int32))
        for t in range(NEW):
            preds.append(int(np.asarray(gen.get_logits()).reshape(-1).argmax()))
            if t < NEW - 1:
                gen.append_tokens(seq[:, PROMPT + t:PROMPT + t + 1].astype(np.int32))
        return np.array(preds)

    def run(new: int) -> np.ndarray:
        params = og.GeneratorParams(og_model)
        length = PROMPT + new
        params.set_search_options(max_length=length, min_length=length, do_sample=False)
        generator = og.Generator(og_model, params)
        generator.append_tokens(ids.numpy().astype(np.int32))
        while not generator.is_done():
            generator.generate_next_token()
        return np.asarray(generator.get_sequence(0))[None, :]

    return run, score


def _time(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(cands: dict[str, Candidate], reps: int) -> dict[str, dict[str, Any]]:
    tokens = {}
    for name, (run, _, _) in cands.items():  # warm-up, and the tokens each generates
        run(2)
        tokens[name] = np.asarray(run(NEW))[0, PROMPT:PROMPT + NEW]
    fp32_seq = np.asarray(cands["HF fp32 PyTorch"][0](NEW))
    forced = {name: float((score(fp32_seq) == fp32_seq[0, PROMPT:]).mean())
              for name, (_, score, _) in cands.items()}
    times: dict[str, dict[str, list[float]]] = {k: {"short": [], "full": []} for k in cands}
    for _ in range(reps):  # interleaved: every candidate once per repetition
        for name, (run, _, _) in cands.items():
            times[name]["short"].append(_time(lambda run=run: run(1)))
            times[name]["full"].append(_time(lambda run=run: run(NEW + 1)))
    ref = tokens["HF fp32 PyTorch"]
    out = {}
    for name, t in times.items():
        decode_s = statistics.median(t["full"]) - statistics.median(t["short"])
        out[name] = {
            "decode_tok_s": NEW / decode_s,
            "prefill_ms": 1e3 * statistics.median(t["short"]),
            "size_mb": cands[name][2],
            "top1_teacher_forced_fp32": forced[name],
            "greedy_agreement_fp32": float((tokens[name] == ref).mean()),
            "times_s": t,
        }
    fx_ref = tokens["fxquant int8 PyTorch"]
    out["fxquant int8 ONNX"]["greedy_agreement_fxquant_pytorch"] = float(
        (tokens["fxquant int8 ONNX"] == fx_ref).mean())
    return out


def run_model(name: str, reps: int, threads: int, genai: bool) -> dict[str, dict[str, Any]]:
    model = build(name)
    ids = torch.randint(0, model.config.vocab_size, (1, PROMPT),
                        generator=torch.Generator().manual_seed(1))
    example = {"input_ids": ids.repeat(2, 1), "attention_mask": torch.ones(2, PROMPT, dtype=int)}
    qmodel = fxquant.quantize(model, example, progress=False)
    fp32_mb = sum(p.numel() * 4 for p in model.parameters()) / 1e6
    with tempfile.TemporaryDirectory(prefix="bench_onnx_generate_") as tmp:
        folder = Path(tmp)
        cands = onnx_candidates(model, qmodel, ids, folder, threads)
        cands["fxquant int8 PyTorch"] = _torch(qmodel, ids, float("nan"))
        cands["HF fp32 PyTorch"] = _torch(model, ids, fp32_mb)
        if genai:
            cands.update(genai_candidates(model, ids, folder, threads))
        return measure(cands, reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["llama", "gpt2"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-genai", dest="genai", action="store_false")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    uptime_before = uptime()
    results: dict[str, Any] = {}
    for name in args.models:
        before = uptime()
        results[name] = run_model(name, args.reps, args.threads, args.genai)
        results[name]["uptime"] = {"before": before, "after": uptime()}
        base = results[name]["HF fp32 PyTorch"]["decode_tok_s"]
        rows = [(k, f"{v['decode_tok_s']:.1f}", f"{v['decode_tok_s'] / base:.2f}x",
                 f"{v['prefill_ms']:.0f}", f"{v['size_mb']:.0f}",
                 f"{v['top1_teacher_forced_fp32']:.2f}", f"{v['greedy_agreement_fp32']:.2f}")
                for k, v in results[name].items() if k != "uptime"]
        print(f"\n{name} (batch 1, {PROMPT}-token prompt, {NEW} greedy tokens, "
              f"{args.threads} threads)")
        print(tabulate(rows, headers=("candidate", "decode tok/s", "vs HF fp32",
                                      "prefill+1 ms", "MB", "top-1 = fp32 (forced)",
                                      "greedy = fp32")))
    payload = {"results": results, "uptime_before": uptime_before, "uptime_after": uptime(),
               "cpu": cpu_model(), "threads": args.threads, "prompt": PROMPT, "new_tokens": NEW}
    print("wrote", write_json("bench_onnx_generate", payload))


if __name__ == "__main__":
    main()
