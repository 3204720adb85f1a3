"""prepare_qat -> train -> convert on plain models: the int8 model predicts what the trained
fake-quant model predicted, the user's model never changes, errors name the remedy."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant import QuantConfig, numerics, ops
from fxquant.errors import AlreadyQuantizedError, CalibrationError, ConfigError
from fxquant.qat import fake_quantizers, is_qat_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, generator=g), torch.randint(0, 4, (n,), generator=g)


def _train(model, steps=15, lr=1e-2, inputs=None):
    x, y = inputs or _data()
    opt = torch.optim.Adam(model.parameters(), lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _output_step(model, x):
    """One quantization step of the last layer's output: its input's step (per-tensor range of
    the hidden activations) times the largest row sum of |W|."""
    with torch.no_grad():
        h = torch.relu(F.linear(x, model.get_parameter("0.weight"), model.get_parameter("0.bias")))
        step = numerics.activation_qparams(h.min().item(), h.max().item(), False)[0]
        return step * model.get_parameter("2.weight").abs().sum(1).max().item()


@pytest.mark.parametrize("mode", ["dynamic", "static", "weight_only"])
@pytest.mark.parametrize("learnable", [False, True])
def test_convert_predicts_what_the_trained_fake_quant_model_predicted(mode, learnable):
    model = mlp()
    x, _ = _data(seed=1)
    qat = fxquant.prepare_qat(model, (x[:8],), config=QuantConfig(mode=mode, weight_bits=4),
                              learnable_scales=learnable)
    assert isinstance(qat, fx.GraphModule) and is_qat_model(qat) and qat.training
    losses = _train(qat)
    assert losses[-1] < losses[0]
    qat.eval()
    int8 = fxquant.convert(qat)
    assert not is_qat_model(int8) and not int8.training
    assert fxquant.record_of(int8).stage == "converted"
    with torch.no_grad(), ops.reference_kernels():
        sim, out = qat(x), int8(x)
    # The int8 model computes the trained simulation: only float summation order differs.
    step = _output_step(qat, x)
    assert (out - sim).abs().max() <= 0.01 * step
    assert torch.equal(out.argmax(1), sim.argmax(1))
    with torch.no_grad():
        fast = int8(x)  # the fast kernels (weight-only: ~14-bit activations)
    assert (fast - sim).abs().max() <= 0.1 * step


def test_learned_scales_are_stored_as_trained():
    model = mlp()
    qat = fxquant.prepare_qat(model, (_data()[0][:8],), config=QuantConfig(weight_bits=3),
                              learnable_scales=True)
    _train(qat, steps=10, lr=5e-2)
    fq = qat.get_submodule("fxq.2_w_obs")
    learned = fq.effective_scale(qat.get_parameter("2.weight")).detach()
    minmax = numerics.quantize_weight(qat.get_parameter("2.weight"), 3, True, True).scale
    assert not torch.allclose(learned, minmax)  # the scale moved away from min-max
    int8 = fxquant.convert(qat)
    torch.testing.assert_close(int8.get_buffer("fxq.2_w_scale"), learned)


def test_the_user_model_is_never_changed():
    model = mlp().train()
    model[0].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qat = fxquant.prepare_qat(model, (_data()[0][:8],), learnable_scales=True)
    assert not {id(p) for p in qat.parameters()} & {id(p) for p in model.parameters()}
    _train(qat)
    fxquant.convert(qat)
    assert model.training and not model[0].bias.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear]


def test_convert_leaves_the_qat_model_trainable():
    qat = fxquant.prepare_qat(mlp(), (_data()[0][:8],), config=QuantConfig(mode="static"))
    _train(qat, steps=2)
    state = {k: v.clone() for k, v in qat.state_dict().items()}
    fxquant.convert(qat)
    assert all(torch.equal(state[k], v) for k, v in qat.state_dict().items())
    assert len(list(fake_quantizers(qat))) == 4
    _train(qat, steps=2)  # still trains after a conversion
    fxquant.convert(qat)


def test_static_ranges_need_data_and_calibration_starts_them():
    model = mlp()
    x = _data()[0]
    qat = fxquant.prepare_qat(model, (x[:8],), config=QuantConfig(mode="static"))
    with pytest.raises(CalibrationError, match="input of 0 saw no data"):
        fxquant.convert(qat)
    qat = fxquant.prepare_qat(model, (x[:8],), config=QuantConfig(mode="static"),
                              calibration=[(x[:32],), (x[32:],)])
    assert {fq.batches for fq in fake_quantizers(qat) if fq.target.startswith("input")} == {2}
    int8 = fxquant.convert(qat)
    assert all("static" in layer.scheme for layer in fxquant.record_of(int8).quantized_layers)


def test_refusals():
    model = mlp()
    x = _data()[0][:8]
    with pytest.raises(ConfigError, match="weight_method='rtn'"):
        fxquant.prepare_qat(model, (x,), config=QuantConfig(weight_method="gptq"))
    with pytest.raises(ConfigError, match="symmetric"):
        fxquant.prepare_qat(model, (x,), config=QuantConfig(weight_symmetric=False),
                            learnable_scales=True)
    with pytest.raises(AlreadyQuantizedError):
        fxquant.prepare_qat(fxquant.quantize(model, (x,)), (x,))


def test_conv_model_with_batchnorm_trains_and_converts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.randn(16, 1, 8, 8)
    y = torch.randint(0, 3, (16,))
    qat = fxquant.prepare_qat(model, (x[:2],), config=QuantConfig(weight_bits=4))
    losses = _train(qat, steps=10, inputs=(x, y))
    assert losses[-1] < losses[0]
    qat.eval()
    int8 = fxquant.convert(qat)
    with torch.no_grad():
        sim, out = qat(x), int8(x)
    torch.testing.assert_close(out, sim, rtol=1e-4, atol=1e-4 * sim.abs().max().item())


class NeedsExport(nn.Module):
    """symbolic_trace cannot iterate over a Proxy; torch.export captures it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(x.dim() - 1):
            x = x * 1.0
        return self.b(torch.relu(self.a(x)))


def test_a_model_captured_with_torch_export_trains_and_converts():
    torch.manual_seed(0)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    qat = fxquant.prepare_qat(NeedsExport().eval(), (x[:4],), config=QuantConfig(weight_bits=4),
                              learnable_scales=True)
    assert qat.meta["fxquant"]["capture"] == "torch.export"
    losses = _train(qat, steps=8, inputs=(x, y))  # train() works (torch.export's module refuses)
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in qat.parameters() if p.requires_grad)
    qat.eval()
    with torch.no_grad(), ops.reference_kernels():
        torch.testing.assert_close(fxquant.convert(qat)(x), qat(x), rtol=1e-5, atol=1e-5)
