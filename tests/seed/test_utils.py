"""The seed toolkit's helpers: the document's ``fxquant.utils.symmetric_quantize``, batches, and
how models are measured (fxquant.measure)."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from fxquant import numerics
from fxquant.batches import batch_inputs
from fxquant.measure import MB, eval_mode, model_size_bytes, peak_memory_mb, time_models
from fxquant.real_quant import convert_to_real_quant
from fxquant.utils import symmetric_quantize


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("axis", [None, 0])
def test_symmetric_quantize_rounds_to_the_weight_grid(bits, axis):
    x = torch.randn(8, 32)
    y = symmetric_quantize(x, bits, axis=axis)
    if axis is None:
        scale = x.abs().max() / (2 ** (bits - 1) - 1)
    else:
        scale = x.abs().amax(dim=1, keepdim=True) / (2 ** (bits - 1) - 1)
    codes = y / scale
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert ((y - x).abs() <= scale / 2 * (1 + 1e-5)).all()
    if axis == 0:
        assert torch.equal(y, numerics.quantize_weight(x, bits, True, True).dequantize())


def test_symmetric_quantize_passes_gradients_straight_through():
    x = torch.randn(10, requires_grad=True)
    (symmetric_quantize(x, 4) * torch.arange(10.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(10.0))


def test_model_size_counts_state_dict_bytes_and_shared_tensors_once():
    a = nn.Linear(10, 10)
    model = nn.Sequential(a, nn.ReLU(), a)
    assert model_size_bytes(model) == (100 + 10) * 4
    q = convert_to_real_quant(nn.Linear(100, 10))
    assert model_size_bytes(q) == 100 * 10 + 10 * (4 + 4 + 4)


def test_batch_inputs_follows_the_inputs_labels_convention():
    x, y = torch.zeros(2, 3), torch.zeros(2)
    assert batch_inputs((x, y))[0] is x and len(batch_inputs((x, y))) == 1
    assert batch_inputs(x)[0] is x
    assert len(batch_inputs(((x, x), y))) == 2


def test_eval_mode_gives_training_flags_back():
    model = nn.Sequential(nn.Dropout(), nn.Linear(2, 2)).train()
    model[1].eval()
    with eval_mode(model):
        assert not model.training and not model[0].training
    assert model.training and model[0].training and not model[1].training


def test_time_models_interleaves_and_returns_samples():
    models = {"a": nn.Linear(4, 4), "b": nn.Linear(4, 4)}
    samples = time_models(models, (torch.randn(2, 4),), warmup=1, rounds=3, runs_per_round=2)
    assert set(samples) == {"a", "b"} and all(len(v) == 3 and min(v) > 0 for v in samples.values())


def test_peak_memory_is_measured_and_sees_the_model():
    model = nn.Linear(1024, 1024)  # 4 MB of float32 weights
    x = torch.randn(4, 1024)
    with torch.no_grad():
        model(x)
    measured = peak_memory_mb(model, (x,))
    # Linux (this project's machines and CI) can reset the peak resident set: it must measure.
    assert measured is not None or not sys.platform.startswith("linux")
    if measured is None:
        pytest.skip("this platform cannot reset the peak resident set")
    size = model_size_bytes(model) / MB
    assert size * 0.9 < measured < size * 3
