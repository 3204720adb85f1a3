"""ONNX Runtime against the GraphModule, at batch 1 and 7 (the export traced batch 2).

Bounds (docs/onnx.md):
* against the export twin (the GraphModule with the file's 8-bit activation codes and int32
  static biases, run with fxquant's reference kernels), validation's own bound: within 2 units of
  the model's activation rounding (the twin against the same model with float activations) plus
  1e-4 of the output's rms -- for weight-only (float activations) that is the 1e-4 alone; and,
  tighter, the test models hold within 0.1 unit (what remains is the rare code that float
  differences upstream push across a rounding boundary);
* against the GraphModule as converted (7-bit activation codes): rms within three times the
  model's own rms error against fp32, since the two differ only by independent activation
  rounding (8-bit in the file, 7-bit in the model);
* a single layer, in quantization steps: each output within one accumulator step
  (x_scale * w_scale of its column) of the GraphModule.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnxcases import CASES, MODES
from torch import nn

import fxquant
from fxquant import ops
from fxquant.onnx_export.twin import export_reference, float_activation_reference
from fxquant.onnx_export.validate import BOUNDS, check_output
from fxquant.passes.portable_twin import portable_model

pytestmark = pytest.mark.onnx


def _session(path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Weight-only files: keep ONNX Runtime's MatMulNBits in float (its default level 4 quantizes
    # activations, a runtime trade-off outside the file; see docs/onnx.md).
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))


def _run(session, inputs):
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(CASES))
def test_onnxruntime_matches_the_graphmodule_at_batch_1_and_7(exported, name, mode):
    e = exported(name, mode)
    session = _session(e.path)
    twin = export_reference(portable_model(e.qmodel))  # the fxquant-op graph
    floats = float_activation_reference(twin)
    for batch in (1, 7):
        inputs = e.case.inputs(batch, batch)
        got = _run(session, inputs)
        with torch.no_grad(), ops.reference_kernels():
            reference = twin(*inputs)
            float_activations = floats(*inputs)
            as_converted = e.qmodel(*inputs).numpy()
            fp32 = e.float_model(*inputs).numpy()
        assert got.shape == reference.shape and got.shape[0] == batch
        check = check_output("output", "test", got, reference, float_activations, None,
                             BOUNDS[mode])
        assert check.passed, check
        assert check.error <= 0.1 * check.unit + 1e-4 * check.scale, check
        model_error = _rms(as_converted - fp32)
        assert _rms(got - as_converted) <= 3 * model_error + 1e-6


class OneLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_one_linear_within_one_accumulator_step(tmp_path, mode):
    torch.manual_seed(0)
    x = torch.randn(16, 64)
    q = fxquant.quantize(OneLinear(), (x,), calibration=[(x,)],
                         config=fxquant.QuantConfig(mode=mode))
    fxquant.export_onnx(q, tmp_path / "one.onnx", (x,))
    got = _run(_session(tmp_path / "one.onnx"), (x,))
    q = fxquant.portable(q)  # the fxquant-op graph, where reference_kernels() applies
    w_scale = q.fxq.fc_w_scale.numpy()
    if mode == "static":
        node = next(n for n in q.graph.nodes if n.target is ops.linear_static)
        x_scale = node.args[1]
        with torch.no_grad(), ops.reference_kernels():
            reference = q(x).numpy()  # in-range inputs: 7-bit codes, same as the file's
    else:
        lo, hi = float(x.min()), float(x.max())
        x_scale = (max(hi, 0) - min(lo, 0)) / 255  # DynamicQuantizeLinear's scale
        with torch.no_grad(), ops.reference_kernels():
            reference = export_reference(q)(x).numpy()
    step = x_scale * w_scale  # one unit of the int32 accumulator, per output column
    assert (np.abs(got - reference) <= step[None, :]).all()


def test_validate_reports_the_numbers(exported, tmp_path):
    e = exported("bert", "static")
    result = fxquant.export_onnx(e.qmodel, tmp_path / "v.onnx", e.case.inputs(2, 0),
                                 validate=True)
    report = result.validation
    assert report.passed and report.mode == "static" and report.bounds == (2.0, 1e-4)
    (check,) = report.outputs
    assert check.name == "output" and check.case == "example"
    assert 0 <= check.error <= check.limit and check.unit > 0 and check.units <= 2.0
