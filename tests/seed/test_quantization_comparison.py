"""fxquant.quantization_comparison: every metric the document lists, measured and reported."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from seed_helpers import labelled_loader, seed_mlp, state_equal

from fxquant.fake_quant import apply_fake_quant_to_model
from fxquant.ptq import PTQPipeline
from fxquant.quantization_comparison import QuantizationComparison
from fxquant.real_quant import convert_to_real_quant

FIELDS = {
    "label",
    "size_bytes",
    "size_mb",
    "latency_ms",
    "latency_ms_min",
    "throughput_samples_per_s",
    "peak_memory_mb",
    "accuracy",
    "mse_vs_original",
}


@pytest.fixture(scope="module")
def comparison():
    mlp = seed_mlp()
    test_loader = labelled_loader(mlp, n=128, seed=2)
    mlp.train()  # the comparison must give the flag back
    snapshot = {k: v.clone() for k, v in mlp.state_dict().items()}
    fq = apply_fake_quant_to_model(mlp)
    real = convert_to_real_quant(mlp)
    c = QuantizationComparison(mlp)
    c.setup_models(fq, real)
    c.compare(test_loader, device="cpu", metric="accuracy", timing_rounds=3, runs_per_round=2)
    assert mlp.training and fq.training
    assert all(torch.equal(snapshot[k], v) for k, v in mlp.state_dict().items())
    return c


def test_results_hold_every_metric(comparison):
    rows = comparison.results["models"]
    assert list(rows) == ["original", "fake_quant", "real_quant"]
    for row in rows.values():
        assert set(row) >= FIELDS
        assert row["latency_ms"] > 0 and row["throughput_samples_per_s"] > 0
        assert row["accuracy"] is not None
    assert rows["original"]["accuracy"] == 1.0 and rows["real_quant"]["accuracy"] >= 0.95
    assert rows["original"]["mse_vs_original"] == 0.0
    assert 0 < rows["real_quant"]["mse_vs_original"] < 1e-3
    assert rows["original"]["size_mb"] == pytest.approx(1628200 / 2**20)
    summary = comparison.results["summary"]
    assert summary["real_quant"]["compression"] >= 3.9
    assert summary["fake_quant"]["compression"] == 1.0


def test_peak_memory_is_measured(comparison):
    rows = comparison.results["models"]
    # Linux (this project's machines and CI) can reset the peak resident set: it must measure.
    assert rows["original"]["peak_memory_mb"] is not None or not sys.platform.startswith("linux")
    if rows["original"]["peak_memory_mb"] is None:
        pytest.skip("this platform cannot reset the peak resident set")
    # fp32 must at least hold its 1.55 MB of weights.
    assert rows["original"]["peak_memory_mb"] > rows["original"]["size_mb"] * 0.9
    assert rows["real_quant"]["peak_memory_mb"] > rows["real_quant"]["size_mb"] * 0.9


def test_print_and_save(comparison, tmp_path, capsys):
    comparison.print_comparison()
    out = capsys.readouterr().out
    for text in (
        "Original (FP32)",
        "Fake Quant",
        "Real Int8",
        "Latency (ms)",
        "Peak memory (MB)",
        "Accuracy",
        "smaller",
    ):
        assert text in out
    path = comparison.save_comparison_report(tmp_path / "sub" / "results.json")
    saved = json.loads(path.read_text())
    assert (
        saved["models"]["real_quant"]["size_bytes"]
        == comparison.results["models"]["real_quant"]["size_bytes"]
    )
    assert {"device", "threads", "batch_size", "torch"} <= set(saved["environment"])


def test_without_a_metric_accuracy_is_absent(mlp, test_loader):
    c = QuantizationComparison(mlp)
    real = convert_to_real_quant(mlp)
    c.setup_models(
        None,
        real,
        extra_models={
            "PTQ Int8": PTQPipeline(mlp).calibrate(test_loader, 1).convert_to_real_quant()
        },
    )
    results = c.compare(test_loader, timing_rounds=2, runs_per_round=1, measure_memory=False)
    assert list(results["models"]) == ["original", "real_quant", "ptq_int8"]
    assert all(r["accuracy"] is None for r in results["models"].values())
    assert "Accuracy" not in c.table()


def test_nothing_to_print_before_compare(mlp):
    with pytest.raises(RuntimeError, match="compare"):
        QuantizationComparison(mlp).print_comparison()


def test_models_are_not_changed(mlp, test_loader):
    real = convert_to_real_quant(mlp)
    before = convert_to_real_quant(mlp)
    c = QuantizationComparison(mlp)
    c.setup_models(None, real)
    c.compare(test_loader, timing_rounds=1, runs_per_round=1, measure_memory=False)
    assert state_equal(real, before)
