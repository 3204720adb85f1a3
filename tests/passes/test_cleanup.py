"""Tests for cleanup: no dead code, no observer, and no float copy of a quantized weight left."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxquant
from fxquant import QuantConfig, passes
from fxquant.graph import ROLES
from fxquant.observers import Observer, WeightObserver
from tests.models import DecoderConfig, GPT2Decoder, make_inputs

DEC = DecoderConfig(n_layer=2, d_model=64, n_head=4, d_mlp=256, vocab=100, n_ctx=64)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.conv = nn.Conv1d(8, 8, 1)
        self.fc1 = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        x = x + self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.fc2(self.norm(self.fc1(x)))


def _ids() -> tuple[torch.Tensor]:
    return (torch.randint(0, 10, (2, 5)),)


@pytest.mark.parametrize("mode", ["dynamic", "static", "weight_only"])
def test_no_float_weight_and_no_observer_left(mode):
    model = Net().eval()
    qmodel = fxquant.quantize(model, _ids(), calibration=[_ids()], config=QuantConfig(mode=mode))
    qmodel.graph.lint()
    state = qmodel.state_dict()
    for layer in ("emb", "conv", "fc1", "fc2"):
        assert f"{layer}.weight" not in state and f"{layer}.bias" not in state
        assert state[f"fxq.{layer}_w_int8"].dtype == torch.int8
    # Only the unquantized LayerNorm keeps float parameters outside fxq.
    assert sorted(k for k in state if not k.startswith("fxq.")) == ["norm.bias", "norm.weight"]
    # Every fxq entry follows the <source>_<role> scheme with a known role.
    for key in state:
        if key.startswith("fxq."):
            assert any(key.endswith(f"_{role}") for role in ROLES), key
    assert not any(isinstance(m, (Observer, WeightObserver)) for m in qmodel.modules())
    assert not any(isinstance(m, (nn.Linear, nn.Conv1d, nn.Embedding)) for m in qmodel.modules())
    # No dead code: every value computed is used.
    assert all(n.users for n in qmodel.graph.nodes if n.op != "output")


def test_skipped_layer_keeps_its_float_weight():
    model = Net().eval()
    qmodel = fxquant.quantize(model, _ids(), config=QuantConfig(skip=("fc2",)))
    state = qmodel.state_dict()
    assert state["fc2.weight"].dtype == torch.float32
    assert torch.equal(state["fc2.weight"], model.fc2.weight)
    assert "fc1.weight" not in state and "fxq.fc2_w_int8" not in state


def test_tied_weight_is_stored_once_as_int8():
    model = GPT2Decoder(DEC, seed=0)
    qmodel = fxquant.quantize(model, make_inputs("gpt2", 2, 8, cfg=DEC))
    state = qmodel.state_dict()
    assert "wte.weight" not in state
    vocab_sized = [k for k, v in state.items() if v.shape == (DEC.vocab, DEC.d_model)]
    assert vocab_sized == ["fxq.wte_w_int8"]
    assert not any(k.startswith("fxq.wte") and k != "fxq.wte_w_int8" and v.dim() > 1
                   for k, v in state.items())


def test_cleanup_returns_a_rebuilt_module_and_keeps_meta():
    model = Net().eval()
    config = QuantConfig()
    gm = fxquant.capture(model, _ids(), config)
    gm.meta["fxquant"]["marker"] = 1
    ctx = passes.PassContext(config=config, example_inputs=_ids())
    gm = passes.run_passes(gm, passes.PREPARE + passes.CONVERT[:-1], ctx)
    before = set(gm.state_dict())
    result = passes.run_cleanup(gm, ctx)
    assert result.modified is True
    assert result.graph_module is not gm
    assert result.graph_module.meta["fxquant"]["marker"] == 1
    dropped = before - set(result.graph_module.state_dict())
    assert {"fc1.weight", "fc1.bias", "emb.weight"} <= dropped

    again = passes.run_cleanup(result.graph_module, ctx)
    assert again.modified is False


def test_surviving_observer_is_an_error():
    config = QuantConfig()
    gm = fxquant.capture(Net().eval(), _ids(), config)
    ctx = passes.PassContext(config=config, example_inputs=_ids())
    gm = passes.run_passes(gm, passes.PREPARE, ctx)  # observers inserted, never lowered
    with pytest.raises(fxquant.PassError, match=r"observer fxq\.\w+_w_obs survived lowering"):
        passes.run_passes(gm, (passes.CLEANUP,), ctx)
