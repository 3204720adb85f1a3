"""fuse_linear_relu: a ReLU after a packed fbgemm linear becomes fbgemm's ReLU variant.

Golden facts (which calls are left) and numerics: the fused call is bit-identical to the packed
linear followed by a ReLU; a linear whose output is also read elsewhere keeps its ReLU.
"""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant import QuantConfig
from fxquant.kernels import fbgemm
from fxquant.passes.fuse_linear_relu import run_fuse_linear_relu, verify_fuse_linear_relu

RELU_FORMS = {
    "module": lambda self, h: self.act(h),
    "torch.relu": lambda self, h: torch.relu(h),
    "F.relu inplace": lambda self, h: F.relu(h, inplace=True),
    "method": lambda self, h: h.relu(),
}


class TwoLayers(nn.Module):
    def __init__(self, form: str) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 8)
        self.form = RELU_FORMS[form]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.form(self, self.fc1(x)))


class Residual(nn.Module):
    """fc1's output feeds a ReLU and a sum: the ReLU cannot move into fc1's kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(torch.relu(h)) + h


def _calls(gm: fx.GraphModule) -> list[object]:
    return [n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method",
                                                         "call_module")]


def _packed(gm: fx.GraphModule) -> list[object]:
    return [getattr(gm, n.target) for n in gm.graph.nodes
            if n.op == "get_attr" and str(n.target).startswith("_packed")]


@pytest.mark.parametrize("form", list(RELU_FORMS))
def test_every_relu_form_fuses_bit_identically(form):
    torch.manual_seed(0)
    model = TwoLayers(form).eval()
    x = torch.randn(5, 24)
    q = fxquant.quantize(model, (x,), progress=False)
    relu_dynamic = fbgemm.WITH_RELU[fbgemm.LINEAR_DYNAMIC]
    assert _calls(q) == [relu_dynamic, fbgemm.LINEAR_DYNAMIC]
    first, second = _packed(q)
    with torch.no_grad():
        expected = fbgemm.LINEAR_DYNAMIC(
            torch.relu(fbgemm.LINEAR_DYNAMIC(x, first, False)), second, False)
        assert torch.equal(q(x), expected)
        # The portable twin has the ReLU back as its own node, and agrees.
        twin = fxquant.portable(q)
        assert torch.relu in _calls(twin)
        torch.testing.assert_close(twin(x), q(x), rtol=0, atol=1e-5)
    kernels = [row for row in fxquant.record_of(q).table().splitlines() if "fbgemm" in row]
    assert "+ ReLU" in kernels[0] and "+ ReLU" not in kernels[1]


def test_static_linears_fuse_too():
    torch.manual_seed(0)
    model = TwoLayers("module").eval()
    x = torch.randn(5, 24)
    q = fxquant.quantize(model, (x,), calibration=[(torch.randn(16, 24),)],
                         config=QuantConfig(mode="static"), progress=False)
    assert _calls(q)[0] is fbgemm.WITH_RELU[fbgemm.LINEAR_STATIC]
    with torch.no_grad():
        assert float(q(x).abs().max()) > 0
        torch.testing.assert_close(fxquant.portable(q)(x), q(x), rtol=0, atol=1e-5)


def test_a_linear_read_elsewhere_keeps_its_relu():
    model = Residual().eval()
    x = torch.randn(3, 16)
    q = fxquant.quantize(model, (x,), progress=False)
    calls = _calls(q)
    assert fbgemm.WITH_RELU[fbgemm.LINEAR_DYNAMIC] not in calls
    assert calls.count(fbgemm.LINEAR_DYNAMIC) == 2
    assert verify_fuse_linear_relu(q) is None


def test_verify_names_a_relu_left_unfused():
    q = fxquant.quantize(TwoLayers("torch.relu").eval(), (torch.randn(2, 24),), progress=False)
    portable_like = fxquant.portable(q)  # fxquant ops: nothing to fuse, nothing to report
    assert verify_fuse_linear_relu(portable_like) is None
    # Undo the fusion by hand: the check must see the ReLU it could fuse.
    node = next(n for n in q.graph.nodes if n.target is fbgemm.WITH_RELU[fbgemm.LINEAR_DYNAMIC])
    node.target = fbgemm.LINEAR_DYNAMIC
    with q.graph.inserting_after(node):
        relu = q.graph.call_function(torch.relu, (node,))
    node.replace_all_uses_with(relu)
    relu.args = (node,)
    assert "ReLU relu" in str(verify_fuse_linear_relu(q))
    run_fuse_linear_relu(q, None)  # type: ignore[arg-type]
    assert verify_fuse_linear_relu(q) is None
