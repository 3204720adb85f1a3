"""The runtime trims after packing: drop_linear_reshapes and fuse_gelu_tanh.

Golden graphs (which nodes are left) and numerics: the reshape drop is bit-identical, the GELU
fusion equal to float rounding; patterns whose intermediates are read elsewhere stay as written.
"""

from __future__ import annotations

import math
import operator

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from transformers.activations import NewGELUActivation
from transformers.pytorch_utils import Conv1D

import fxquant
from fxquant import QuantConfig
from fxquant.kernels import fbgemm
from fxquant.passes.fuse_gelu_tanh import run_fuse_gelu_tanh


class HFMlp(nn.Module):
    """GPT-2's MLP: Conv1D (view / addmm / view) around NewGELUActivation (eight ops)."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.c_fc, self.act, self.c_proj = Conv1D(4 * d, d), NewGELUActivation(), Conv1D(d, 4 * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


def _targets(gm: fx.GraphModule) -> list[object]:
    return [n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method")]


@pytest.mark.parametrize("mode", ["dynamic", "weight_only"])
def test_conv1d_layers_call_the_kernel_on_the_unflattened_input(mode):
    model = HFMlp().eval()
    x = torch.randn(2, 5, 32)
    q = fxquant.quantize(model, (x,), config=QuantConfig(mode=mode))
    targets = _targets(q)
    assert "view" not in targets and "size" not in targets and operator.add not in targets
    if mode == "dynamic":
        assert targets.count(fbgemm.LINEAR_DYNAMIC) == 2
    # The portable twin (reference kernels on the same codes) agrees: the trims changed no value.
    with torch.no_grad():
        fast, twin = q(x), fxquant.portable(q)(x)
    assert fast.shape == (2, 5, 32)
    torch.testing.assert_close(fast, twin, rtol=0, atol=1e-5)


def test_reshape_drop_is_bit_identical_for_dynamic_linears():
    model = HFMlp().eval()
    x = torch.randn(3, 7, 32)
    q = fxquant.quantize(model, (x,))
    flat = fbgemm.LINEAR_DYNAMIC
    packed = [getattr(q, n.target) for n in q.graph.nodes
              if n.op == "get_attr" and n.target.startswith("_packed")]
    with torch.no_grad():
        h = flat(x.view(-1, 32), packed[0], False).view(3, 7, 128)
        expected = flat(F.gelu(h, approximate="tanh").view(-1, 128), packed[1], False)
        assert torch.equal(q(x), expected.view(3, 7, 32))


def test_gelu_formula_becomes_one_call_equal_to_rounding():
    gm = fx.symbolic_trace(NewGELUActivation())
    assert len(_targets(gm)) == 8
    run_fuse_gelu_tanh(gm, None)  # type: ignore[arg-type]
    gm.recompile()
    assert _targets(gm) == [F.gelu]
    x = torch.randn(1000) * 4
    torch.testing.assert_close(gm(x), NewGELUActivation()(x), rtol=1e-6, atol=1e-6)


class LeakyGelu(nn.Module):
    """The GELU formula with its tanh also returned: fusing would lose a value in use."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0)))
        return 0.5 * x * (1.0 + t), t


class OtherConstant(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # 0.05, not 0.044715: not GELU
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.05 * x**3)))


@pytest.mark.parametrize("model", [LeakyGelu(), OtherConstant()])
def test_gelu_lookalikes_stay_as_written(model):
    gm = fx.symbolic_trace(model)
    before = _targets(gm)
    assert not run_fuse_gelu_tanh(gm, None).modified  # type: ignore[arg-type]
    assert _targets(gm) == before


class TwoConv1D(nn.Module):
    """Conv1D straight into Conv1D: the first one's unflatten view is the second one's input."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = Conv1D(48, 32), Conv1D(32, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def test_back_to_back_conv1d_layers_both_lose_their_views():
    x = torch.randn(2, 3, 32)
    q = fxquant.quantize(TwoConv1D().eval(), (x,))
    assert "view" not in _targets(q)
    with torch.no_grad():
        torch.testing.assert_close(q(x), fxquant.portable(q)(x), rtol=0, atol=1e-5)


def test_runtime_trims_verify_what_they_guarantee():
    from fxquant.passes import DROP_LINEAR_RESHAPES, FUSE_GELU_TANH

    gm = fx.symbolic_trace(NewGELUActivation())
    assert "GELU" in FUSE_GELU_TANH.verify(gm)  # type: ignore[misc]
    run_fuse_gelu_tanh(gm, None)  # type: ignore[arg-type]
    assert FUSE_GELU_TANH.verify(gm) is None  # type: ignore[misc]
    q = fxquant.quantize(HFMlp().eval(), (torch.randn(1, 2, 32),))
    assert DROP_LINEAR_RESHAPES.verify(q) is None  # type: ignore[misc]


def test_pack_weights_verify_catches_an_unpacked_fast_layer():
    from fxquant.passes import PACK_WEIGHTS

    q = fxquant.quantize(HFMlp().eval(), (torch.randn(1, 2, 32),))
    assert PACK_WEIGHTS.verify(q) is None  # type: ignore[misc]
    twin = fxquant.portable(q)  # the fxquant-op graph: every layer could be packed, none is
    assert "could call its kernel directly" in PACK_WEIGHTS.verify(twin)  # type: ignore[operator]
