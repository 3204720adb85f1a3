"""QAT recovers what 2-bit PTQ loses, on real data (scikit-learn's digits): the int8 model of a
QAT fine-tuned MLP is within 3 points of fp32 accuracy (benchmarks/bench_qat.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("sklearn")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def test_two_bit_qat_recovers_fp32_accuracy_on_digits():
    from benchmarks.bench_qat import DigitsSettings, digits_experiment

    # Shorter than the benchmark's defaults (30 + 5 epochs), same recipe: measured 98.0% fp32,
    # 77.8% 2-bit PTQ, 97.6% after 3 QAT epochs.
    settings = DigitsSettings(fp32_epochs=12, lr=3e-3, qat_epochs=3)
    rows = {r["method"]: r for r in digits_experiment(settings, lsq=False)["rows"]}
    fp32 = rows["fp32"]["test_accuracy"]
    ptq = rows["PTQ w2 (int8 model)"]["test_accuracy"]
    qat = rows["QAT w2, 3 epochs (int8 model)"]
    assert fp32 > 96.0
    assert ptq < fp32 - 5.0  # 2-bit PTQ loses a lot...
    assert qat["test_accuracy"] >= fp32 - 3.0  # ...QAT recovers it, in the real int8 model
    assert abs(qat["test_accuracy"] - qat["fake_quant_accuracy"]) < 0.5
