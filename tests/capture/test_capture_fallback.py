"""Capture: symbolic_trace first, torch.export when tracing fails, and clear errors when both do."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant import ops
from fxquant.passes.pack_weights import PACKED_LINEAR_OPS

# fxquant's fused ops, and the fbgemm calls they become once weights are packed
FUSED = {ops.linear_dynamic, ops.linear_static, ops.linear_weight_only, *PACKED_LINEAR_OPS}


class ShapeBranch(nn.Module):
    """Python control flow on a shape (the rank): symbolic_trace cannot decide the branch;
    torch.export can, and the batch size stays free."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        if x.dim() == 3:
            x = x.flatten(0, 1)
        return self.fc(x)


class KwargsModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x, **kwargs):
        scale = kwargs.get("scale", 1.0)
        return self.fc(x) * scale


@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    hidden: torch.Tensor


class DataclassOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return Out(self.fc2(h), h)


class ValueBranch(nn.Module):
    """Control flow on tensor *values*: neither capture method can handle it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def _fused_count(gm):
    return sum(1 for n in gm.graph.nodes if n.target in FUSED)


def test_traceable_model_uses_symbolic_trace():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
    q = fxquant.quantize(model, (torch.randn(2, 16),))
    assert q.meta["fxquant"]["capture"] == "symbolic_trace"


def test_shape_branch_falls_back_to_export_and_keeps_dynamic_batch():
    model = ShapeBranch().eval()
    q = fxquant.quantize(model, (torch.randn(1, 16),))
    assert q.meta["fxquant"]["capture"] == "torch.export"
    assert _fused_count(q) == 1
    for batch in (1, 2, 7):  # the example had batch 1: other batch sizes must still run
        x = torch.randn(batch, 16)
        ref = model(x)
        out = q(x)
        assert out.shape == ref.shape
        assert (out - ref).norm() / ref.norm() < 0.05


def test_kwargs_model_is_captured():
    model = KwargsModel().eval()
    q = fxquant.quantize(model, (torch.randn(3, 16),))
    assert _fused_count(q) == 1
    x = torch.randn(5, 16)
    assert torch.allclose(q(x), model(x), atol=0.05)


def test_dataclass_output_is_preserved():
    model = DataclassOut().eval()
    q = fxquant.quantize(model, (torch.randn(2, 16),))
    out = q(torch.randn(6, 16))
    assert isinstance(out, Out)
    assert out.logits.shape == (6, 4) and out.hidden.shape == (6, 32)
    assert _fused_count(q) == 2


def test_capture_method_can_be_forced():
    model = nn.Sequential(nn.Linear(16, 16))
    q = fxquant.quantize(model, (torch.randn(2, 16),),
                         config=fxquant.QuantConfig(capture="export"))
    assert q.meta["fxquant"]["capture"] == "torch.export"
    assert _fused_count(q) == 1
    with pytest.raises(fxquant.CaptureError, match="ShapeBranch"):
        fxquant.quantize(ShapeBranch(), (torch.randn(2, 16),),
                         config=fxquant.QuantConfig(capture="symbolic_trace"))


def test_when_both_captures_fail_regions_keep_the_python_control_flow():
    model = ValueBranch().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = fxquant.quantize(model, (torch.randn(2, 16),))
    record = fxquant.record_of(q)
    assert type(q) is ValueBranch and record.capture == "regions"
    assert [r.name for r in record.regions] == ["fc"]
    # Why the whole model could not be one graph: the module and the user's line.
    assert "ValueBranch" in record.whole_model_failure
    assert "test_capture_fallback.py" in record.whole_model_failure
    x = torch.randn(4, 16)
    for sign in (1.0, -1.0):  # both branches still run, in Python
        xs = x.abs() * sign
        with torch.no_grad():
            assert torch.allclose(q(xs), model(xs), atol=0.05)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_when_both_captures_fail_and_whole_capture_is_forced_the_error_names_the_line():
    with pytest.raises(fxquant.CaptureError) as info:
        fxquant.quantize(ValueBranch(), (torch.randn(2, 16),),
                         config=fxquant.QuantConfig(capture="export"))
    assert "ValueBranch" in str(info.value) and "test_capture_fallback.py" in str(info.value)


class AddmmConv1D(nn.Module):
    """GPT-2's Conv1D: weight stored [in, out], computed as addmm(bias, x, W)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * 0.1)
        self.bias = nn.Parameter(torch.randn(n_out) * 0.1)

    def forward(self, x):
        # This spelling on purpose (a Proxy cannot be unpacked with *): HF Conv1D's.
        shape = x.shape[:-1] + (self.weight.shape[1],)  # noqa: RUF005
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(shape)


class FourSpellings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.module = nn.Linear(16, 16)
        self.functional_w = nn.Parameter(torch.randn(16, 16) * 0.1)
        self.conv1d = AddmmConv1D(16, 16)
        self.matmul_w = nn.Parameter(torch.randn(16, 16) * 0.1)

    def forward(self, x):
        x = self.module(x)
        x = F.linear(x, self.functional_w)
        x = self.conv1d(x)
        return torch.matmul(x, self.matmul_w)


@pytest.mark.parametrize("capture", ["symbolic_trace", "export"])
def test_every_spelling_of_a_parameter_matmul_becomes_the_same_op(capture):
    model = FourSpellings().eval()
    x = torch.randn(4, 16)
    q = fxquant.quantize(model, (x,), config=fxquant.QuantConfig(capture=capture))
    targets = [n.target for n in fxquant.portable(q).graph.nodes if n.op == "call_function"]
    assert targets.count(ops.linear_dynamic) == 4
    float_matmuls = {F.linear, torch.addmm, torch.matmul, torch.ops.aten.linear.default,
                     torch.ops.aten.addmm.default, torch.ops.aten.matmul.default,
                     torch.ops.aten.mm.default}
    assert not float_matmuls & set(targets)
    int8 = [k for k, v in q.state_dict().items() if v.dtype == torch.int8]
    assert len(int8) == 4
    ref = model(x)
    assert (q(x) - ref).norm() / ref.norm() < 0.05


def test_tied_weights_stay_one_int8_tensor_through_export():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.head = nn.Linear(16, 50, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(self.emb(ids))

    model = Tied().eval()
    ids = torch.randint(0, 50, (2, 5))
    q = fxquant.quantize(model, (ids,), config=fxquant.QuantConfig(capture="export"))
    int8 = {k: v for k, v in q.state_dict().items() if v.dtype == torch.int8}
    assert len(int8) == 1, int8.keys()
    assert not any(v.dtype == torch.float32 and v.shape == (50, 16)
                   for v in q.state_dict().values())
    ref = model(ids)
    assert (q(ids) - ref).norm() / ref.norm() < 0.05
