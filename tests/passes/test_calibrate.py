"""Tests for the calibrate pass: observers see every batch, the graph is unchanged, and bad
calibration data is refused with the batch named."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fxquant
from fxquant import CalibrationError, QuantConfig, passes
from fxquant.inputs import ModelInputs, as_model_inputs, calibration_batches


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.gate = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.gate(y)


def _example() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(2, 4), torch.randn(2, 4)


def _prepared(mode: str = "static") -> torch.fx.GraphModule:
    return fxquant.prepare(TwoInputs(), _example(), QuantConfig(mode=mode))


def _run(gm, batches, n_inputs: int = 2):
    ctx = passes.PassContext(config=gm.meta["fxquant"]["config"], calibration=batches,
                             example_inputs=(None,) * n_inputs)
    code = gm.code
    result = passes.run_calibrate(gm, ctx)
    assert result.modified is False and gm.code == code
    return result


def test_observers_record_the_range_of_every_batch():
    gm = _prepared()
    batches = [(torch.full((1, 4), float(i)), torch.full((3, 4), -float(i))) for i in range(1, 4)]
    _run(gm, batches)
    fc, gate = gm.fxq.fc_act_obs, gm.fxq.gate_act_obs
    assert (fc.batches, fc.min_val, fc.max_val) == (3, 1.0, 3.0)
    assert (gate.batches, gate.min_val, gate.max_val) == (3, -3.0, -1.0)
    assert gm.meta["fxquant"]["calibration_batches"] == 3


def test_batch_forms_map_onto_inputs():
    x, y = _example()
    assert as_model_inputs((x, y)) == ModelInputs((x, y), {})
    assert as_model_inputs([x, y]) == ModelInputs((x, y), {})
    assert as_model_inputs({"x": x}) == ModelInputs((), {"x": x})
    assert as_model_inputs(x) == ModelInputs((x,), {})
    batches = list(calibration_batches([(x, y, "label")], ModelInputs((x, y))))
    assert batches[0].args == (x, y)  # (inputs, labels): cut to the example's length

    gm = _prepared()
    _run(gm, [(x, y), (x, y, torch.tensor([1, 0]))])
    assert gm.fxq.fc_act_obs.batches == 2


def test_a_batch_in_another_form_than_the_example_is_refused():
    x, y = _example()
    gm = _prepared()
    with pytest.raises(CalibrationError, match=r"batch 1 .* example"):
        _run(gm, [(x, y), {"x": x, "y": y}])


def test_dataloader_of_inputs_and_labels():
    gm = fxquant.prepare(nn.Sequential(nn.Linear(4, 3)), (torch.randn(2, 4),),
                         QuantConfig(mode="static"))
    data = TensorDataset(torch.randn(10, 4), torch.randint(0, 3, (10,)))
    fxquant.calibrate(gm, DataLoader(data, batch_size=4))
    obs = getattr(gm.fxq, "0_act_obs")
    assert obs.batches == 3
    assert obs.min_val == pytest.approx(float(data.tensors[0].min()))
    assert obs.max_val == pytest.approx(float(data.tensors[0].max()))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_batch_is_refused_naming_batch_and_input(bad):
    gm = _prepared()
    x, y = _example()
    y_bad = y.clone()
    y_bad[1, 2] = bad
    with pytest.raises(fxquant.NonFiniteError, match=r"calibration batch 2, input 1, holds NaN"):
        _run(gm, [(x, y), (x, y), (x, y_bad)])


def test_non_finite_activation_is_refused_naming_the_layer():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].bias[0] = float("inf")  # a finite input becomes Inf inside the model
    gm = fxquant.prepare(model, (torch.randn(2, 4),), QuantConfig(mode="static", skip=("0",)))
    with pytest.raises(fxquant.NonFiniteError, match=r"input of 1 produced NaN or Inf.*batch 0"):
        fxquant.calibrate(gm, [torch.randn(2, 4)])


def test_empty_calibration_is_refused():
    gm = _prepared()
    with pytest.raises(fxquant.CalibrationError, match="calibration set is empty"):
        _run(gm, [])


def test_missing_calibration_is_refused():
    gm = _prepared()
    with pytest.raises(fxquant.CalibrationError, match="static mode needs calibration data"):
        _run(gm, None)


@pytest.mark.parametrize("mode", ["dynamic", "weight_only"])
def test_modes_without_activation_observers_need_no_data(mode):
    gm = _prepared(mode)
    _run(gm, None)
    assert "calibration_batches" not in gm.meta["fxquant"]


def test_observer_that_saw_no_batch_is_refused_at_convert():
    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    gm = fxquant.prepare(Branch(), (torch.randn(1, 4),), QuantConfig(mode="static"))
    gm.meta["fxquant"]["calibration_batches"] = 1  # pretend a batch ran, but none reached fc
    with pytest.raises(fxquant.CalibrationError, match="input of fc saw no calibration data"):
        fxquant.convert(gm)
