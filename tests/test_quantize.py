"""End-to-end tests of fxquant.quantize and the staged API on the benchmark models."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fxquant
from fxquant import QuantConfig, ops
from fxquant.kernels import fbgemm
from fxquant.passes.runtime_calls import linear_weight_only_blocked, linear_weight_only_packed
from tests.models import DecoderConfig, GPT2Decoder, SmallConvNet, make_inputs, seed_mlp

DEC = DecoderConfig(n_layer=2, d_model=64, n_head=4, d_mlp=256, vocab=100, n_ctx=64)
MODES = ("dynamic", "static", "weight_only")
# The fused op of each mode, and the fbgemm call it becomes once its weight is packed.
FUSED = {
    "dynamic": {ops.linear_dynamic, fbgemm.LINEAR_DYNAMIC, fbgemm.WITH_RELU[fbgemm.LINEAR_DYNAMIC]},
    "static": {ops.linear_static, fbgemm.LINEAR_STATIC, fbgemm.WITH_RELU[fbgemm.LINEAR_STATIC]},
    "weight_only": {ops.linear_weight_only, linear_weight_only_packed, linear_weight_only_blocked},
}

# Bounds on ||int8(x) - fp32(x)|| / ||fp32(x)|| over held-out batches, default config
# (8-bit per-channel symmetric weights, 7-bit activations). Measured maxima over 5 batches:
#   seed MLP: dynamic 0.028, static 0.026, weight_only 0.007
#   GPT-2 (2 layers, d=64): dynamic 0.022, static 0.025, weight_only 0.010
# Dynamic and static carry the 7-bit activation rounding (about 1/127 of the range per input,
# summed over the layers), weight-only only the 8-bit weight rounding; each bound is ~2x the
# measurement, so a real regression (a wrong scale, a saturating kernel: errors of 10-100%)
# fails while seed-to-seed noise does not.
REL_BOUND_8BIT = {"dynamic": 0.06, "static": 0.06, "weight_only": 0.02}
# 4-bit weights (15 levels): measured 0.12-0.13 (MLP) and 0.18 (GPT-2) in every mode.
REL_BOUND_4BIT = 0.3


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).norm() / ref.norm())


def _mlp_batch(seed: int) -> tuple[torch.Tensor]:
    return make_inputs("mlp", 8, 0, seed=seed)


def _gpt2_batch(seed: int) -> tuple[torch.Tensor]:
    return make_inputs("gpt2", 2, 16, cfg=DEC, seed=seed)


MODELS = {
    "mlp": (seed_mlp, _mlp_batch),
    "gpt2": (lambda: GPT2Decoder(DEC, seed=0), _gpt2_batch),
}


def _quantize(kind: str, config: QuantConfig):
    build, batch = MODELS[kind]
    model = build().eval()
    calibration = [batch(s) for s in range(1, 5)]
    qmodel = fxquant.quantize(model, batch(0), calibration=calibration, config=config)
    return model, qmodel, batch


@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
@pytest.mark.parametrize("mode", MODES)
def test_int8_model_tracks_fp32(kind, mode):
    model, qmodel, batch = _quantize(kind, QuantConfig(mode=mode))
    fused = [n for n in qmodel.graph.nodes if n.target in FUSED[mode]]
    assert len(fused) == (2 if kind == "mlp" else 9)
    with torch.no_grad():
        for seed in range(10, 15):  # batches not seen in calibration
            x = batch(seed)
            ref, got = model(*x), qmodel(*x)
            assert got.shape == ref.shape and bool(torch.isfinite(got).all())
            assert _rel_err(got, ref) <= REL_BOUND_8BIT[mode]


@pytest.mark.parametrize("observer", ["minmax", "moving_average", "percentile"])
def test_static_mode_with_each_activation_observer(observer):
    # Measured 0.021 (minmax), 0.032 (moving_average), 0.029 (percentile) on the seed MLP.
    model, qmodel, batch = _quantize("mlp", QuantConfig(mode="static",
                                                        activation_observer=observer))
    x = batch(10)
    with torch.no_grad():
        assert _rel_err(qmodel(*x), model(*x)) <= REL_BOUND_8BIT["static"]


@pytest.mark.parametrize("mode", MODES)
def test_conv_net_quantizes_with_int8_convs(mode):
    # Measured 0.016 (dynamic), 0.023 (static), 0.005 (weight_only).
    model = SmallConvNet(8).eval()

    def batch(seed: int) -> tuple[torch.Tensor]:
        return make_inputs("convnet", 4, 0, image_size=8, seed=seed)

    qmodel = fxquant.quantize(model, batch(0), calibration=[batch(s) for s in range(1, 4)],
                              config=QuantConfig(mode=mode))
    reasons = [r for _, r in qmodel.meta["fxquant"]["refusals"].get("fuse_dequant_matmul", [])]
    convs = [n for n in qmodel.graph.nodes if n.target in ops.FUSED_CONV_OPS]
    if mode == "weight_only":
        assert reasons == ["weight-only conv: no int8 conv kernel takes float activations; "
                           "dequantize + conv"] * 2
        assert convs == []
    else:  # both convs run the int8 kernel, each with its ReLU fused
        assert reasons == []
        assert [n.args[-1] for n in convs] == [True, True]
    assert sum(n.target in FUSED[mode] for n in qmodel.graph.nodes) == 1  # the fc head
    assert qmodel.state_dict()["fxq.conv1_w_int8"].dtype == torch.int8
    x = batch(10)
    with torch.no_grad():
        assert _rel_err(qmodel(*x), model(*x)) <= REL_BOUND_8BIT[mode]


@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
def test_weight_bits_4(kind):
    model, qmodel, batch = _quantize(kind, QuantConfig(weight_bits=4, embedding_bits=4))
    codes = [v for k, v in qmodel.state_dict().items() if k.endswith("_w_int8")]
    assert codes and all(v.dtype == torch.int8 for v in codes)
    assert min(int(v.min()) for v in codes) >= -7 and max(int(v.max()) for v in codes) <= 7
    assert max(int(v.max()) for v in codes) == 7  # the range is used, not collapsed
    x = batch(10)
    with torch.no_grad():
        err = _rel_err(qmodel(*x), model(*x))
    assert err <= REL_BOUND_4BIT
    # 4 bits are measurably coarser than 8 (on the same model).
    q8 = fxquant.quantize(model, batch(0))
    with torch.no_grad():
        assert _rel_err(q8(*x), model(*x)) < err


def _nbytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def test_int8_state_dict_is_four_times_smaller():
    # seed MLP: 407k weights, of which 1.3% are per-channel scales/zero-points/biases.
    model = seed_mlp().eval()
    qmodel = fxquant.quantize(model, _mlp_batch(0))
    fp32, int8 = _nbytes(model.state_dict()), _nbytes(qmodel.state_dict())
    assert int8 <= fp32 / 3.9, fp32 / int8


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "params": list(model.parameters()),
        "training": {name: m.training for name, m in model.named_modules()},
        "hooks": {name: list(m._forward_hooks) for name, m in model.named_modules()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
    }


def assert_untouched(model: nn.Module, snap: dict) -> None:
    state = model.state_dict()
    assert state.keys() == snap["state"].keys()
    for key, value in snap["state"].items():
        assert torch.equal(state[key], value), key
    params = list(model.parameters())
    assert len(params) == len(snap["params"])
    assert all(p is q for p, q in zip(params, snap["params"], strict=True))
    assert [p.requires_grad for p in params] == snap["requires_grad"]
    assert {n: m.training for n, m in model.named_modules()} == snap["training"]
    assert {n: list(m._forward_hooks) for n, m in model.named_modules()} == snap["hooks"]
    assert all(p.device.type == "cpu" for p in params)


class WithDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


@pytest.mark.parametrize("mode", MODES)
def test_user_model_is_untouched(mode):
    model = WithDropout().train()
    fired: list[str] = []
    model.register_forward_hook(lambda m, i, o: fired.append("root"))
    model.fc1.register_forward_hook(lambda m, i, o: fired.append("fc1"))
    snap = _snapshot(model)
    x = torch.randn(5, 16)

    qmodel = fxquant.quantize(model, (x,), calibration=[(x,)], config=QuantConfig(mode=mode))

    assert fired == []  # the user's hooks do not fire while fxquant works on its copy
    assert_untouched(model, snap)
    assert model.training and model.drop.training
    fired.clear()
    model(x)
    assert fired == ["fc1", "root"]
    # The quantized copy is an inference model: dropout off, deterministic.
    assert not qmodel.training
    with torch.no_grad():
        assert torch.equal(qmodel(x), qmodel(x))
        reference = copy.deepcopy(model).eval()(x)
        assert _rel_err(qmodel(x), reference) <= REL_BOUND_8BIT[mode]


@pytest.mark.parametrize(("kind", "mode"), [("gpt2", "static"), ("mlp", "dynamic"),
                                             ("mlp", "weight_only")])
def test_staged_api_equals_quantize(kind, mode):
    build, batch = MODELS[kind]
    model = build()
    config = QuantConfig(mode=mode)
    calibration = [batch(s) for s in range(1, 4)]
    one_shot = fxquant.quantize(model, batch(0), calibration=calibration, config=config)

    observed = fxquant.prepare(model, batch(0), config)
    assert observed.meta["fxquant"]["stage"] == "prepared"
    if mode == "static":
        assert fxquant.calibrate(observed, calibration) is observed
    observed_code = observed.code
    staged = fxquant.convert(observed)
    assert observed.code == observed_code  # convert leaves the observed model as it was
    assert staged.meta["fxquant"]["stage"] == "converted"

    assert staged.code == one_shot.code
    a, b = staged.state_dict(), one_shot.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = batch(9)
    with torch.no_grad():
        assert torch.equal(staged(*x), one_shot(*x))
        # A second convert of the same observed model gives the same model again.
        assert torch.equal(fxquant.convert(observed)(*x), staged(*x))


def test_config_round_trips_through_a_dict():
    config = QuantConfig(
        mode="static",
        weight_bits=6,
        weight_granularity="per_tensor",
        weight_symmetric=False,
        activation_observer="percentile",
        percentile=99.9,
        moving_average_momentum=0.25,
        reduce_range=False,
        quantize_embeddings=False,
        skip=("encoder.fc1", "head"),
        leaf_modules=(nn.MultiheadAttention,),
        min_weight_elements=64,
    )
    data = config.to_dict()
    assert data["leaf_modules"] == ["torch.nn.modules.activation.MultiheadAttention"]
    assert data["skip"] == ["encoder.fc1", "head"]
    restored = QuantConfig.from_dict(json.loads(json.dumps(data)))
    assert restored == config
    assert restored.leaf_modules == ()  # classes cannot be rebuilt from names; dropped
    for f in dataclasses.fields(QuantConfig):
        if f.name != "leaf_modules":
            assert getattr(restored, f.name) == getattr(config, f.name), f.name
    assert QuantConfig.from_dict(QuantConfig().to_dict()) == QuantConfig()


def test_config_from_dict_refuses_unknown_and_newer():
    with pytest.raises(fxquant.ConfigError, match=r"unknown QuantConfig fields: \['wieght_bits'\]"):
        QuantConfig.from_dict({"wieght_bits": 8})
    with pytest.raises(fxquant.ConfigError, match="newer"):
        QuantConfig.from_dict({"version": 99})


def test_config_is_frozen_and_replace_validates():
    config = QuantConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mode = "static"  # type: ignore[misc]
    assert config.replace(mode="static").mode == "static"
    with pytest.raises(fxquant.ConfigError):
        config.replace(weight_bits=0)


def test_converted_model_records_its_config():
    config = QuantConfig(weight_bits=6, skip=("2",))
    qmodel = fxquant.quantize(seed_mlp(), _mlp_batch(0), config=config)
    assert qmodel.meta["fxquant"]["config"] == config
    assert "example_inputs" not in qmodel.meta["fxquant"]


def test_dataloader_of_inputs_and_labels_calibrates():
    model = seed_mlp().eval()
    inputs = torch.randn(24, 784)
    labels = torch.randint(0, 10, (24,))
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=8)
    config = QuantConfig(mode="static")
    from_loader = fxquant.quantize(model, _mlp_batch(0), calibration=loader, config=config)
    from_list = fxquant.quantize(model, _mlp_batch(0), calibration=list(inputs.split(8)),
                                 config=config)
    assert from_loader.meta["fxquant"]["calibration_batches"] == 3
    x = _mlp_batch(5)
    with torch.no_grad():
        assert torch.equal(from_loader(*x), from_list(*x))
        assert _rel_err(from_loader(*x), model(*x)) <= REL_BOUND_8BIT["static"]


def test_quantized_model_runs_at_other_shapes():
    model = GPT2Decoder(DEC, seed=0).eval()
    qmodel = fxquant.quantize(model, _gpt2_batch(0))
    x = make_inputs("gpt2", 3, 5, cfg=DEC, seed=4)
    with torch.no_grad():
        out, ref = qmodel(*x), model(*x)
    assert out.shape == (3, 5, DEC.vocab)
    assert _rel_err(out, ref) <= REL_BOUND_8BIT["dynamic"]
