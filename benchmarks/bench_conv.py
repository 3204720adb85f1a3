"""Conv benchmark: a ResNet-18-shaped Hugging Face ResNetModel, fp32 vs fxquant vs torch.ao, and
per-layer 3x3 conv micro-benchmarks of every int8 kernel candidate.

    python benchmarks/bench_conv.py                 # this CPU, then with oneDNN/fbgemm/ATen at AVX2
    python benchmarks/bench_conv.py --no-avx2       # this CPU only
    python benchmarks/bench_conv.py --quick         # fewer rounds
    python benchmarks/bench_conv.py --max-load 1.5  # on a shared machine: wait for a quiet minute

Model: ``transformers.ResNetModel(ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2],
hidden_sizes=[64, 128, 256, 512], embedding_size=64))``, random init, eval, input 1x3x160x160,
2 threads. Variants are timed interleaved (the order rotates every round) and compared by median.
Accuracy: cosine of the pooled output against fp32 on held-out random inputs.

The ``avx2`` section re-runs everything in a subprocess with ``ONEDNN_MAX_CPU_ISA=AVX2``,
``FBGEMM_ENABLE_INSTRUCTIONS=AVX2`` and ``ATEN_CPU_CAPABILITY=avx2``: the same machine with the
kernels the project's AMD Zen 3 target runs (no AVX-512, no VNNI, no AMX). It approximates that
machine's kernel choice, not its absolute speed.

Writes benchmarks/results/bench_conv.json and prints tables.
"""

from __future__ import annotations

import argparse
import copy
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fxquant
from benchmarks.common import cpu_model, uptime, write_json
from fxquant import numerics, ops
from fxquant.kernels import conv as conv_kernels

AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
            "ATEN_CPU_CAPABILITY": "avx2"}
LAYERS = ((64, 40), (128, 20), (256, 10), (512, 5))  # ResNet-18's 3x3 convs at 160x160 input


def wait_for_idle(max_load: float | None, timeout_s: float) -> None:
    """On a shared machine, wait (up to ``timeout_s``) until the 1-minute load average is below
    ``max_load``; timings taken while other jobs run move by several times."""
    deadline = time.monotonic() + timeout_s
    while max_load is not None and os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        time.sleep(15)


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int,
                reps: int) -> dict[str, tuple[float, float]]:
    """(median, minimum) milliseconds per call; every round runs each variant ``reps`` times, in
    an order that rotates, so a burst of load on the shared machine hits all variants alike."""
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(2):
                fn()
        for r in range(rounds):
            for i in range(len(names)):
                name = names[(i + r) % len(names)]
                for _ in range(reps):
                    t0 = time.perf_counter()
                    fns[name]()
                    samples[name].append(time.perf_counter() - t0)
    return {n: (statistics.median(s) * 1e3, min(s) * 1e3) for n, s in samples.items()}


# --- the model -----------------------------------------------------------------------------------


def resnet18_hf() -> torch.nn.Module:
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    cfg = ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512],
                       embedding_size=64)
    return ResNetModel(cfg).eval()


def images(seed: int) -> torch.Tensor:
    return torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(seed))


def _ao_prepare(module: torch.nn.Module, example: Any) -> torch.nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    return prepare_fx(module, get_default_qconfig_mapping("x86"), (example,))


def _ao_regions(model: torch.nn.Module) -> list[str]:
    """The submodules torch.ao can trace: the stem's conv layer and the four encoder stages
    (fxquant's own region capture picks the same ones)."""
    return ["embedder.embedder", *[f"encoder.stages.{i}" for i in range(len(model.encoder.stages))]]


def torch_ao_static(model: torch.nn.Module, calibration: list[torch.Tensor]) -> tuple[Any, str]:
    """torch.ao's FX static quantization (x86 backend, its default qconfig), or why it could not
    run. The whole model first; where symbolic tracing fails, per traceable submodule."""
    from torch.ao.quantization.quantize_fx import convert_fx

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            prepared = _ao_prepare(copy.deepcopy(model), calibration[0])
            names = [""]
            note = "whole model"
        except Exception as exc:
            note = (f"whole-model prepare_fx failed ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:90]}); quantized per submodule: "
                    f"{', '.join(_ao_regions(model))}")
            prepared = copy.deepcopy(model)
            names = _ao_regions(model)
            inputs: dict[str, Any] = {}
            hooks = [prepared.get_submodule(n).register_forward_pre_hook(
                lambda m, a, n=n: inputs.setdefault(n, a[0])) for n in names]
            with torch.inference_mode():
                prepared(calibration[0])
            for h in hooks:
                h.remove()
            for n in names:
                _set(prepared, n, _ao_prepare(prepared.get_submodule(n), inputs[n]))
        with torch.inference_mode():
            for x in calibration:
                prepared(x)
        for n in names:
            if n:
                _set(prepared, n, convert_fx(prepared.get_submodule(n)))
        return (convert_fx(prepared) if names == [""] else prepared), note


def _set(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def cosines(model: torch.nn.Module, ref: torch.nn.Module,
            inputs: list[torch.Tensor]) -> list[float]:
    out = []
    with torch.inference_mode():
        for x in inputs:
            a, b = ref(x).pooler_output.flatten(), model(x).pooler_output.flatten()
            out.append(float(F.cosine_similarity(a, b, dim=0)))
    return out


def bench_model(rounds: int) -> dict[str, Any]:
    model = resnet18_hf()
    x = images(0)
    calibration = [images(s) for s in range(1, 5)]
    held_out = [images(s) for s in range(100, 104)]
    variants: dict[str, Any] = {"fp32 eager": model}
    variants["fp32 channels_last"] = copy.deepcopy(model).to(memory_format=torch.channels_last)
    start = time.perf_counter()
    variants["fxquant static"] = fxquant.quantize(model, (x,), calibration=calibration,
                                                  config=fxquant.QuantConfig(mode="static"))
    variants["fxquant dynamic"] = fxquant.quantize(model, (x,))
    quantize_s = time.perf_counter() - start
    ao, ao_note = torch_ao_static(model, calibration)
    if ao is not None:
        variants["torch.ao FX static (x86)"] = ao
    fns = {name: (lambda m=m: m(x)) for name, m in variants.items()}
    times = interleaved(fns, rounds, reps=2)
    rows = []
    for name, m in variants.items():
        cos = cosines(m, model, held_out)
        median, fastest = times[name]
        rows.append({"variant": name, "median_ms": round(median, 2), "min_ms": round(fastest, 2),
                     "speedup_vs_fp32": round(times["fp32 eager"][0] / median, 2),
                     "cosine_mean": round(statistics.mean(cos), 5),
                     "cosine_min": round(min(cos), 5)})
    return {"rows": rows, "torch_ao": ao_note, "quantize_both_s": round(quantize_s, 1)}


# --- per-layer micro-benchmarks ------------------------------------------------------------------


def _layer_candidates(c: int, hw: int) -> tuple[dict[str, Callable[[], Any]], dict[str, float]]:
    """The 3x3 conv of ResNet-18 at (c channels, hw x hw), batch 1, in every implementation, and
    each one's relative error against the fp32 conv."""
    g = torch.Generator().manual_seed(c)
    x = torch.randn(1, c, hw, hw, generator=g).relu()  # a post-ReLU activation
    w = torch.randn(c, c, 3, 3, generator=g) * (2.0 / (9 * c)) ** 0.5
    b = torch.randn(c, generator=g) * 0.1
    qw = numerics.quantize_weight(w, 8, True, True, pair_safe=True)
    codes, scale, zp = qw.codes, qw.scale, qw.zero_point
    xs, xz = numerics.activation_qparams(float(x.min()), float(x.max()), False)
    xcl = x.contiguous(memory_format=torch.channels_last)
    geo = ([1, 1], [1, 1], [1, 1], 1)
    ref = F.conv2d(x, w, b, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.quantized.engine = "fbgemm"
        qweight = torch._make_per_channel_quantized_tensor(codes, scale.double(), zp.long(), 0)
        fb_packed = torch.ops.quantized.conv2d_prepack(qweight, b, [1, 1], [1, 1], [1, 1], 1)
    ys, yz = numerics.activation_qparams(float(ref.min()), float(ref.max()), False)

    def fbgemm_static() -> torch.Tensor:
        qx = torch.quantize_per_tensor(xcl, xs, xz, torch.quint8)
        return torch.ops.quantized.conv2d(qx, fb_packed, ys, yz).dequantize()

    q = conv_kernels.quantize(xcl, xs, xz, False)
    packed = conv_kernels.packed_weight(codes, zp, ((1, 1), (1, 1), (1, 1), 1), xz, False,
                                        tuple(xcl.shape))
    fns = {
        "fp32 (NCHW)": lambda: F.conv2d(x, w, b, 1, 1),
        "fp32 channels_last": lambda: F.conv2d(xcl, w, b, 1, 1),
        "dequantize + fp32 conv": lambda: F.conv2d(x, qw.dequantize(), b, 1, 1),
        "fbgemm conv2d static (u8 out)": fbgemm_static,
        "fbgemm conv2d_dynamic": lambda: torch.ops.quantized.conv2d_dynamic(xcl, fb_packed, False),
        "oneDNN static (fxquant op)": lambda: ops.conv_static(
            xcl, xs, xz, False, codes, scale, zp, b, *geo, False),
        "oneDNN dynamic (fxquant op)": lambda: ops.conv_dynamic(
            xcl, codes, scale, zp, b, False, *geo, False),
        "oneDNN kernel only (u8 in)": lambda: conv_kernels._run(
            q, xs, xz, packed, scale, zp, b, ((1, 1), (1, 1), (1, 1), 1), False),
    }
    with torch.inference_mode():
        errors = {n: float((fn() - ref).norm() / ref.norm()) for n, fn in fns.items()}
    return fns, errors


def bench_layers(rounds: int) -> list[dict[str, Any]]:
    rows = []
    for c, hw in LAYERS:
        fns, errors = _layer_candidates(c, hw)
        times = interleaved(fns, rounds, reps=5)
        base = times["fp32 (NCHW)"][0]
        for name, (ms, fastest) in times.items():
            rows.append({"layer": f"{c}ch {hw}x{hw}", "kernel": name,
                         "median_us": round(ms * 1e3, 1), "min_us": round(fastest * 1e3, 1),
                         "speedup_vs_fp32": round(base / ms, 2),
                         "rel_error": round(errors[name], 4)})
    return rows


# --- driver --------------------------------------------------------------------------------------


def run(quick: bool) -> dict[str, Any]:
    torch.set_num_threads(2)
    rounds = 6 if quick else 20
    before = uptime()
    result = {"cpu_model": cpu_model(), "env": {k: os.environ.get(k) for k in AVX2_ENV},
              "uptime_before": before, "flags": sorted(
                  f for f in fxquant.cpu.flags() if f in {"avx2", "avx512f", "avx512_vnni",
                                                          "avx_vnni", "amx_int8"})}
    result["model"] = bench_model(rounds)
    result["layers"] = bench_layers(rounds)
    result["uptime_after"] = uptime()
    return result


def print_tables(title: str, result: dict[str, Any]) -> None:
    print(f"\n== {title}: {result['cpu_model']} {result['flags']} ==")
    print(f"load: {result['uptime_before']}  ->  {result['uptime_after']}")
    print(tabulate(result["model"]["rows"], headers="keys", tablefmt="github"))
    print(f"torch.ao: {result['model']['torch_ao']}")
    print(tabulate(result["layers"], headers="keys", tablefmt="github"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-avx2", action="store_true", help="skip the AVX2-limited re-run")
    parser.add_argument("--max-load", type=float, default=None,
                        help="wait until the 1-minute load average is below this before each part")
    parser.add_argument("--wait-s", type=float, default=1800.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    wait_for_idle(args.max_load, args.wait_s)
    result = run(args.quick)
    if args.child:
        print("RESULT " + json.dumps(result))
        return
    print_tables("this CPU", result)
    payload: dict[str, Any] = {"native": result}
    if not args.no_avx2:
        wait_for_idle(args.max_load, args.wait_s)
        cmd = [sys.executable, __file__, "--child"] + (["--quick"] if args.quick else [])
        out = subprocess.run(cmd, env={**os.environ, **AVX2_ENV}, capture_output=True,
                             text=True, check=True).stdout
        payload["avx2"] = json.loads(out.split("RESULT ", 1)[1])
        print_tables("AVX2-limited kernels (the AMD Zen 3 target's ISA)", payload["avx2"])
    path = write_json("bench_conv", payload)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
