"""Benchmark a float model against its quantized forms: the seed document's
``QuantizationComparison``.

    comparison = QuantizationComparison(original_model)
    comparison.setup_models(fake_quant_model, real_quant_model)
    results = comparison.compare(test_loader, device="cpu", metric="accuracy")
    comparison.print_comparison()
    comparison.save_comparison_report("results.json")

Per model it records (how each is measured: :mod:`fxquant.measure`, :mod:`fxquant.metrics`):

==========================  ====================================================================
``size_mb``                 tensors in ``state_dict()``, MB = 2**20 bytes (``size_bytes`` exact)
``latency_ms``              median wall time of one forward pass on the loader's first batch
``throughput_samples_per_s``  batch size / median latency
``peak_memory_mb``          measured growth of peak resident memory while a copy of the model is
                            made and runs that batch
``accuracy``                the metric averaged over the loader (when a metric is given)
``mse_vs_original``         mean squared difference of the outputs from the original model's
``mse_vs_fake_quant``       (real int8 only, when both are set up) the same against fake quant
==========================  ====================================================================

No model is changed: each runs in eval mode and gets its training flags back afterwards (on
another device than the models', copies are measured).
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import platform
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate
from torch import nn

from . import measure, metrics
from ._version import __version__
from .batches import batch_inputs, batch_size_of, first_batch

LABELS = {"original": "Original (FP32)", "fake_quant": "Fake Quant", "real_quant": "Real Int8"}
COLUMNS = (
    ("size_mb", "Size (MB)", "{:.3f}"),
    ("latency_ms", "Latency (ms)", "{:.3f}"),
    ("latency_ms_min", "Best (ms)", "{:.3f}"),
    ("throughput_samples_per_s", "Throughput (samples/s)", "{:,.0f}"),
    ("peak_memory_mb", "Peak memory (MB)", "{:.2f}"),
    ("accuracy", "Accuracy", "{:.2%}"),
    ("mse_vs_original", "Error (MSE vs FP32)", "{:.3g}"),
)


class QuantizationComparison:
    """Compare ``original_model`` with quantized versions of it on the same data."""

    def __init__(self, original_model: nn.Module) -> None:
        self.models: dict[str, nn.Module] = {"original": original_model}
        self.labels: dict[str, str] = {"original": LABELS["original"]}
        self.results: dict[str, Any] = {}

    def setup_models(
        self,
        fake_quant_model: nn.Module | None,
        real_quant_model: nn.Module | None,
        extra_models: Mapping[str, nn.Module] | None = None,
    ) -> None:
        """The models to compare with the original. ``extra_models`` adds more, by label."""
        for key, model in (("fake_quant", fake_quant_model), ("real_quant", real_quant_model)):
            if model is not None:
                self.models[key], self.labels[key] = model, LABELS[key]
        for label, model in (extra_models or {}).items():
            key = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
            self.models[key], self.labels[key] = model, label

    def compare(
        self,
        loader: Iterable[Any],
        device: str | torch.device = "cpu",
        *,
        metric: str | metrics.Metric | None = None,
        timing_rounds: int = 20,
        runs_per_round: int = 5,
        measure_memory: bool = True,
    ) -> dict[str, Any]:
        """Measure every model on ``loader`` (batches of ``(inputs, labels)`` or inputs; it is
        iterated twice, so pass a DataLoader or a list, not a generator).

        Latency and peak memory use the loader's first batch; accuracy (when ``metric`` is
        ``"accuracy"`` or a callable ``(outputs, labels) -> float``) and output error use all
        of it. Returns (and keeps, for printing and saving) the results dict.
        """
        device = torch.device(device)
        on_device = {k: self._on(m, device) for k, m in self.models.items()}
        inputs = tuple(
            a.to(device) if isinstance(a, torch.Tensor) else a
            for a in batch_inputs(first_batch(loader))
        )
        batch = batch_size_of(inputs)
        with measure.eval_mode(*on_device.values()):
            times = measure.time_models(
                on_device, inputs, rounds=timing_rounds, runs_per_round=runs_per_round
            )
            memory = {
                k: measure.peak_memory_mb(m, inputs) if measure_memory else None
                for k, m in on_device.items()
            }
            pairs = [(k, "original") for k in on_device]
            if {"fake_quant", "real_quant"} <= set(on_device):
                pairs.append(("real_quant", "fake_quant"))  # how closely int8 runs the simulation
            scores = metrics.evaluate(
                on_device, loader, metric=metrics.resolve_metric(metric), pairs=pairs, device=device
            )
        rows = {}
        for key, model in self.models.items():
            size = measure.model_size_bytes(model)
            rows[key] = {
                "label": self.labels[key],
                "size_bytes": size,
                "size_mb": size / measure.MB,
                **measure.latency_summary(times[key], batch),
                "peak_memory_mb": memory[key],
                "accuracy": scores.metric.get(key),
                "mse_vs_original": scores.mse[(key, "original")],
            }
        if ("real_quant", "fake_quant") in scores.mse:
            rows["real_quant"]["mse_vs_fake_quant"] = scores.mse[("real_quant", "fake_quant")]
        self.results = {
            "models": rows,
            "summary": self._summary(rows),
            "environment": _environment(device, batch, timing_rounds, runs_per_round),
        }
        return self.results

    @staticmethod
    def _on(model: nn.Module, device: torch.device) -> nn.Module:
        current = next((t.device for t in model.state_dict().values()), torch.device("cpu"))
        return model if current == device else copy.deepcopy(model).to(device)

    @staticmethod
    def _summary(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        base = rows["original"]
        for key, row in rows.items():
            if key == "original":
                continue
            summary[key] = {
                "compression": base["size_bytes"] / row["size_bytes"],
                "speedup": base["latency_ms"] / row["latency_ms"],
            }
            if base["accuracy"] is not None and row["accuracy"] is not None:
                summary[key]["accuracy_change"] = row["accuracy"] - base["accuracy"]
        return summary

    def table(self) -> str:
        """The results as a text table (tabulate)."""
        if not self.results:
            raise RuntimeError("no results yet: call compare(loader) first.")
        rows = self.results["models"]
        columns = [c for c in COLUMNS if any(r[c[0]] is not None for r in rows.values())]
        body = []
        for key, row in rows.items():
            cells = [row["label"]]
            for name, _, fmt in columns:
                value = row[name]
                cells.append(
                    "-"
                    if value is None or (key == "original" and name == "mse_vs_original")
                    else fmt.format(value)
                )
            body.append(cells)
        return tabulate(
            body,
            headers=["Method", *(title for _, title, _ in columns)],
            tablefmt="github",
            disable_numparse=True,
        )

    def print_comparison(self) -> None:
        """Print the table and each model's compression and speed-up against the original."""
        print(self.table())
        env = self.results["environment"]
        load = env.get("load_average_1min")
        print(
            f"\nbatch {env['batch_size']}, {env['threads']} threads, {env['device']}"
            + (f", load average {load:.1f} on {os.cpu_count()} CPUs" if load is not None else "")
            + "; latency: median (and best) of interleaved rounds"
        )
        for key, s in self.results["summary"].items():
            print(
                f"  {self.labels[key]}: {s['compression']:.2f}x smaller, "
                f"{s['speedup']:.2f}x the speed of FP32"
            )
        real = self.results["models"].get("real_quant", {})
        if "mse_vs_fake_quant" in real:
            print(
                f"  Real Int8 vs Fake Quant outputs: MSE {real['mse_vs_fake_quant']:.3g} "
                "(the int8 model runs what fake quantization simulated)"
            )

    def save_comparison_report(self, path: str | os.PathLike[str]) -> Path:
        """Write the results as JSON (folders are created). Returns the path."""
        if not self.results:
            raise RuntimeError("no results yet: call compare(loader) first.")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.results, indent=2) + "\n")
        return path


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _environment(device: torch.device, batch: int, rounds: int, runs: int) -> dict[str, Any]:
    return {
        "device": str(device),
        "processor": _cpu_name(),
        "threads": torch.get_num_threads(),
        "batch_size": batch,
        "timing": f"{rounds} interleaved rounds x {runs} runs",
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "fxquant": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
