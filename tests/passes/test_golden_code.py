"""Golden code: what the whole pass pipeline (``passes.PIPELINE``: prepare, calibrate, convert)
generates for a few small models, compared with snapshots in ``tests/golden/``.

A change to any pass that alters the generated code shows up here as a diff to read. When the
change is intended, regenerate the snapshots and review them with ``git diff tests/golden``::

    FXQUANT_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/passes/test_golden_code.py

The code is normalised first: float constants (calibrated activation scales) become ``<float>``
and memory addresses ``0x?``, so the snapshots hold the structure, not the numerics (the parity
tests check those).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import fxquant
from fxquant import QuantConfig, passes

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
UPDATE = os.environ.get("FXQUANT_UPDATE_GOLDEN", "") not in ("", "0")


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


def _mlp_input(seed: int) -> torch.Tensor:
    return torch.randn(4, 16, generator=torch.Generator().manual_seed(seed))


def _image(seed: int) -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


CASES = {
    "mlp_dynamic": (MLP, _mlp_input, QuantConfig(mode="dynamic")),
    "mlp_weight_only": (MLP, _mlp_input, QuantConfig(mode="weight_only")),
    "convnet_static": (ConvNet, _image, QuantConfig(mode="static")),
}


def normalize(code: str) -> str:
    code = re.sub(r"0x[0-9a-fA-F]+", "0x?", code)
    code = re.sub(r"(?<![\w.])-?\d+\.\d+(?:[eE][-+]?\d+)?", "<float>", code)
    code = re.sub(r"(?<![\w.])-?\d+[eE][-+]?\d+", "<float>", code)
    return "\n".join(line.rstrip() for line in code.strip().splitlines()) + "\n"


def _generated(name: str) -> str:
    make_model, make_input, config = CASES[name]
    model = make_model().eval()
    gm = fxquant.capture(model, (make_input(0),), config)
    ctx = passes.PassContext(config=config, example_inputs=(make_input(0),),
                             calibration=[(make_input(s),) for s in (1, 2, 3)])
    return normalize(passes.run_passes(gm, passes.PIPELINE, ctx, verify=True).code)


def test_normalize_hides_constants_and_addresses_only():
    code = ("\n\ndef f(x):\n"
            "    q = quantize(x, 0.0123, 7, False);  y = f(x, 1e-05, 2, 0x7f3a)  # c1   \n")
    assert normalize(code) == ("def f(x):\n"
                               "    q = quantize(x, <float>, 7, False);  y = f(x, <float>, 2, 0x?)"
                               "  # c1\n")


@pytest.mark.parametrize("name", sorted(CASES))
def test_generated_code_matches_the_snapshot(name):
    code = _generated(name)
    path = GOLDEN / f"{name}.py.txt"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(code)
    assert path.exists(), f"no snapshot {path}; run with FXQUANT_UPDATE_GOLDEN=1 to write it"
    assert code == path.read_text(), (
        f"the pipeline's code for {name} differs from {path}; if the change is intended, "
        "regenerate with FXQUANT_UPDATE_GOLDEN=1 and review git diff tests/golden")
