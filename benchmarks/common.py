"""Shared benchmark helpers: timing medians, serialized sizes, error metrics, result output."""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


def median_ms(fn: Callable[[], Any], *, warmup: int = 5, reps: int = 20, min_time_s: float = 1.0,
              budget_s: float = 20.0) -> float:
    """Median wall time of ``fn()`` in milliseconds.

    Runs at least ``reps`` times and at least ``min_time_s`` seconds (fast calls get hundreds of
    repetitions, so one scheduler hiccup cannot move the median), at most ``budget_s``.
    """
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times: list[float] = []
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            if len(times) >= reps and elapsed > min_time_s:
                break
            if elapsed > budget_s and len(times) >= 5:
                break
    return statistics.median(times) * 1e3


def serialized_mb(module: torch.nn.Module) -> float:
    """Size of ``torch.save(module.state_dict())`` in MB (10^6 bytes)."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.tell() / 1e6


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """||y - ref|| / ||ref||."""
    return float((y.float() - ref.float()).norm() / ref.float().norm().clamp(min=1e-12))


def top1_agreement(logits: torch.Tensor, ref: torch.Tensor) -> float:
    return float((logits.argmax(-1) == ref.argmax(-1)).float().mean())


def machine() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def uptime() -> str:
    """``uptime``'s line (the load average a result was measured at)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    return path
