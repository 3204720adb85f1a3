"""fxquant.ptq: PTQPipeline drives fxquant.prepare / calibrate / convert."""

from __future__ import annotations

import pytest
import torch
from seed_helpers import int8_keys
from torch import nn

import fxquant
from fxquant import ops
from fxquant.errors import CalibrationError
from fxquant.fake_quant import apply_fake_quant_to_model
from fxquant.ptq import PTQPipeline
from fxquant.real_quant import convert_to_real_quant


def _fused_ops(gm) -> list:
    """The fused int8 ops of ``gm``'s fxquant-op graph (its portable form)."""
    portable = fxquant.portable(gm)
    return [n.target for n in portable.graph.nodes if n.target in ops.FUSED_LINEAR_OPS]


def test_calibrated_pipeline_builds_a_static_int8_model(mlp, calibration_loader):
    snapshot = {k: v.clone() for k, v in mlp.state_dict().items()}
    pipeline = PTQPipeline(mlp, bits=8)
    assert pipeline.calibrate(calibration_loader, num_batches=3) is pipeline
    assert pipeline.calibration_batches == 3
    qmodel = pipeline.convert_to_real_quant()
    assert pipeline.quantize_weights() is qmodel  # built once
    assert _fused_ops(qmodel) == [ops.linear_static, ops.linear_static]
    assert int8_keys(qmodel) == ["fxq.0_w_int8", "fxq.2_w_int8"]
    assert all(torch.equal(snapshot[k], v) for k, v in mlp.state_dict().items())


def test_calibrating_again_adds_batches(mlp, calibration_loader):
    pipeline = PTQPipeline(mlp).calibrate(calibration_loader, num_batches=2)
    first = pipeline.convert_to_real_quant()
    pipeline.calibrate(calibration_loader, num_batches=None)
    assert pipeline.calibration_batches == 2 + len(calibration_loader)
    assert pipeline.convert_to_real_quant() is not first


def test_size_accuracy_and_error(mlp, calibration_loader, test_loader):
    pipeline = PTQPipeline(mlp, bits=8).calibrate(calibration_loader)
    original, quantized = pipeline.get_model_size()
    assert original == (784 * 512 + 512 + 512 * 10 + 10) * 4
    assert original / quantized >= 3.9
    scores = pipeline.evaluate_accuracy(test_loader)
    assert scores["original"] == 1.0  # labels are the fp32 model's predictions
    assert scores["quantized"] >= 0.95
    ref = torch.cat([mlp(x) for x, _ in test_loader]).detach()
    assert scores["output_mse"] < 1e-3 * ref.var().item()


def test_benchmark_reports_latency_and_throughput(mlp, calibration_loader):
    pipeline = PTQPipeline(mlp).calibrate(calibration_loader, num_batches=1)
    result = pipeline.benchmark_inference(num_runs=20, warmup=2)
    assert result["batch_size"] == 32
    for key in ("original", "quantized"):
        assert result[f"{key}_latency_ms"] > 0
        assert result[f"{key}_throughput"] == pytest.approx(32e3 / result[f"{key}_latency_ms"])
    assert result["speedup"] > 0


def test_uncalibrated_pipeline_is_dynamic_and_needs_example_inputs(mlp):
    with pytest.raises(CalibrationError, match="calibrate"):
        PTQPipeline(mlp).convert_to_real_quant()
    qmodel = PTQPipeline(mlp, example_inputs=torch.rand(2, 784)).convert_to_real_quant()
    assert _fused_ops(qmodel) == [ops.linear_dynamic, ops.linear_dynamic]


@pytest.mark.parametrize("bits", [4, 8])
def test_bits_reach_the_weights(mlp, calibration_loader, bits):
    qmodel = PTQPipeline(mlp, bits=bits).calibrate(calibration_loader, 1).convert_to_real_quant()
    codes = qmodel.state_dict()["fxq.0_w_int8"]
    assert codes.abs().max() == 2 ** (bits - 1) - 1


@pytest.mark.parametrize("per_channel", [True, False])
def test_accepts_converted_and_fake_quant_models(mlp, calibration_loader, per_channel):
    real = convert_to_real_quant(mlp, per_channel=per_channel)
    snapshot = {k: v.clone() for k, v in real.state_dict().items()}
    qmodel = PTQPipeline(real).calibrate(calibration_loader, 2).convert_to_real_quant()
    # Same int8 weights (and scheme) as the converted model; the pipeline adds calibrated
    # activations.
    assert torch.equal(qmodel.state_dict()["fxq.0_w_int8"], real[0].w_int8)
    assert qmodel.meta["fxquant"]["config"].weight_granularity == (
        "per_channel" if per_channel else "per_tensor"
    )
    assert all(torch.equal(snapshot[k], v) for k, v in real.state_dict().items())
    original, quantized = PTQPipeline(real).calibrate(calibration_loader, 1).get_model_size()
    assert original / quantized >= 3.9  # "original" is the float equivalent
    fq = apply_fake_quant_to_model(mlp)
    assert int8_keys(PTQPipeline(fq).calibrate(calibration_loader, 1).quantize_weights())


def test_empty_loader_is_refused(mlp):
    with pytest.raises(CalibrationError, match="empty"):
        PTQPipeline(mlp).calibrate([])


def test_training_model_is_left_in_training_mode():
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout()).train()
    PTQPipeline(model).calibrate([torch.randn(4, 8)]).convert_to_real_quant()
    assert model.training and model[1].training
