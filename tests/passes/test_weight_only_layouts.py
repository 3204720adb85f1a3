"""pack_weights for weight-only layers: the panel layout (AVX-512 CPUs) and the row layout.

The panel layout replaces the codes in RAM (one copy), so ``state_dict`` must rebuild them
bit-exact, ``load_state_dict`` must re-pack, and the portable twin must get its buffers back.
Both layouts run the same arithmetic: outputs agree to float rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fxquant
from fxquant import QuantConfig
from fxquant.kernels import weight_only
from fxquant.passes import pack_weights
from fxquant.passes.runtime_calls import linear_weight_only_blocked, linear_weight_only_packed

pytestmark = pytest.mark.skipif(not weight_only.available(),
                                reason=f"extension not built: {weight_only.status().detail}")
WEIGHT_ONLY = QuantConfig(mode="weight_only")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 50), nn.ReLU(), nn.Linear(50, 7)).eval()


def _calls(gm: torch.fx.GraphModule) -> list[object]:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


@pytest.fixture
def layout(monkeypatch, request):
    """Quantize with the panel layout (``blocked``) or the row layout (``rows``), whatever this
    CPU would choose: both kernels run on AVX2 and AVX-512."""
    blocked = request.param == "blocked"
    monkeypatch.setattr(pack_weights, "_blocked_weight_only", lambda: blocked)
    return request.param


@pytest.mark.parametrize("layout", ["blocked", "rows"], indirect=True)
def test_state_dict_round_trip_and_one_copy(layout):
    model, x = _model(), torch.randn(5, 40)
    q = fxquant.quantize(model, (x,), config=WEIGHT_ONLY, progress=False)
    runtime = linear_weight_only_blocked if layout == "blocked" else linear_weight_only_packed
    assert _calls(q).count(runtime) == 2
    twin = fxquant.portable(q)
    state, twin_state = q.state_dict(), twin.state_dict()
    assert state.keys() == twin_state.keys()
    for key in state:
        assert torch.equal(state[key], twin_state[key]), key
    buffers = dict(q.named_buffers())
    codes = [k for k in state if k.endswith("_w_int8")]
    assert len(codes) == 2
    for key in codes:  # the panel layout holds the only copy; the row layout reads the codes
        assert (key in buffers) == (layout == "rows")
    with torch.no_grad():
        torch.testing.assert_close(q(x), twin(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(copy.deepcopy(q)(x), q(x), rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["blocked", "rows"], indirect=True)
@pytest.mark.parametrize("assign", [False, True])
def test_load_state_dict_repacks(layout, assign):
    model, x = _model(), torch.randn(3, 40)
    q = fxquant.quantize(model, (x,), config=WEIGHT_ONLY, progress=False)
    state = q.state_dict()
    key = next(k for k in state if k.endswith("0_w_int8"))
    flipped = torch.flip(state[key], dims=[0])
    state[key] = flipped.clone()
    with torch.no_grad():
        before = q(x)
        q.load_state_dict(state, assign=assign)
        after = q(x)
        expected = fxquant.portable(q)(x)
    assert torch.equal(q.state_dict()[key], flipped)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-5)


def test_both_layouts_compute_the_same_layer(monkeypatch):
    model, x = _model(), torch.randn(33, 40)
    out = {}
    for blocked in (True, False):
        monkeypatch.setattr(pack_weights, "_blocked_weight_only", lambda b=blocked: b)
        q = fxquant.quantize(model, (x,), config=WEIGHT_ONLY, progress=False)
        with torch.no_grad():
            out[blocked] = q(x)
    torch.testing.assert_close(out[True], out[False], rtol=0, atol=1e-5)


def test_the_kernel_report_names_the_layout(monkeypatch):
    monkeypatch.setattr(pack_weights, "_blocked_weight_only", lambda: True)
    q = fxquant.quantize(_model(), (torch.randn(2, 40),), config=WEIGHT_ONLY, progress=False)
    assert "output-channel panels" in fxquant.record_of(q).table()
