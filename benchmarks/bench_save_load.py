"""Save and load GPT-2 small (124M, random weights from ``GPT2Config()``): time and memory.

    .venv/bin/python benchmarks/bench_save_load.py [--mode dynamic] [--loads 3]

This process quantizes and saves the model; each load runs in a fresh process that first imports
fxquant, transformers and GPT-2's modeling code (timed apart: any process that uses the model
imports them), then measures ``fxquant.load``: wall time and the growth of resident memory from
just before the call to its peak (``VmHWM`` after ``clear_refs``), against the int8 bytes of the
save; then a second load in the same process. Each loaded model's logits are checked
bit-identical with the saved model's. Writes benchmarks/results/bench_save_load.json, with
``uptime`` before and after (this machine's CPUs are shared: load averages above the core count
slow every number).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_json

LOADER = r"""
import json, sys, time
t0 = time.perf_counter()
import torch, transformers, fxquant
from safetensors.torch import load_file
imports = time.perf_counter() - t0
t0 = time.perf_counter()
import transformers.models.gpt2.modeling_gpt2  # the model's code: imported once per process
model_code = time.perf_counter() - t0

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS
before = status("VmRSS")
start = time.perf_counter()
q = fxquant.load(sys.argv[1])
seconds = time.perf_counter() - start
peak = status("VmHWM")
ref = load_file(sys.argv[2])
with torch.no_grad():
    same = torch.equal(q(ref["ids"]).logits, ref["logits"])
start = time.perf_counter()
fxquant.load(sys.argv[1])
again = time.perf_counter() - start
print(json.dumps({"imports_s": imports, "model_code_import_s": model_code, "load_s": seconds,
                  "second_load_s": again, "rss_before": before,
                  "peak_growth_bytes": peak - before, "bit_identical": same}))
"""


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _save(folder: Path, mode: str) -> dict:
    import transformers

    import fxquant

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    ids = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(1))
    calibration = [(torch.randint(0, 50257, (1, 64)),) for _ in range(4)]
    start = time.perf_counter()
    q = fxquant.quantize(model, (ids,), calibration=calibration,
                         config=fxquant.QuantConfig(mode=mode), progress=False)
    quantize_s = time.perf_counter() - start
    start = time.perf_counter()
    fxquant.save(q, folder / "gpt2-int8")
    save_s = time.perf_counter() - start
    with torch.no_grad():
        save_file({"ids": ids, "logits": q(ids).logits.contiguous()}, str(folder / "ref.st"))
    manifest = json.loads((folder / "gpt2-int8" / "fxquant.json").read_text())
    return {"quantize_s": quantize_s, "save_s": save_s,
            "file_bytes": manifest["weights"]["size_bytes"],
            "bytes_by_dtype": manifest["weights"]["bytes_by_dtype"]}


def _load(folder: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", LOADER, str(folder / "gpt2-int8"),
                           str(folder / "ref.st")], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="dynamic", choices=("dynamic", "static", "weight_only"))
    parser.add_argument("--loads", type=int, default=3)
    args = parser.parse_args()
    before = uptime()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        saved = _save(folder, args.mode)
        loads = [_load(folder) for _ in range(args.loads)]
    int8 = saved["bytes_by_dtype"]["int8"]
    load_s = statistics.median(r["load_s"] for r in loads)
    second_s = statistics.median(r["second_load_s"] for r in loads)
    growth = statistics.median(r["peak_growth_bytes"] for r in loads)
    result = {
        "model": "GPT2LMHeadModel(GPT2Config()), random weights", "mode": args.mode,
        **saved, "int8_bytes": int8, "loads": loads,
        "load_s_median": load_s, "second_load_s_median": second_s,
        "peak_rss_growth_median_bytes": growth,
        "peak_rss_growth_over_int8": growth / int8,
        "bit_identical": all(r["bit_identical"] for r in loads),
        "uptime_before": before, "uptime_after": uptime(),
    }
    path = write_json("bench_save_load", result)
    print(f"GPT-2 small, {args.mode}: quantize {saved['quantize_s']:.1f} s, save "
          f"{saved['save_s']:.2f} s, file {saved['file_bytes'] / 2**20:.1f} MiB "
          f"(int8 {int8 / 2**20:.1f} MiB)")
    print(f"load (median of {len(loads)} fresh processes): {load_s:.2f} s (again in the same "
          f"process: {second_s:.2f} s); peak RSS growth {growth / 2**20:.1f} MiB = "
          f"{growth / int8:.2f}x the int8 bytes; imports apart: fxquant + transformers "
          f"{statistics.median(r['imports_s'] for r in loads):.1f} s, modeling_gpt2 "
          f"{statistics.median(r['model_code_import_s'] for r in loads):.1f} s; "
          f"bit-identical: {result['bit_identical']}")
    print(f"load: {before}  ->  {result['uptime_after']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
