"""Session-cached exports for the ONNX tests: several files look at one file from different
angles."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import fxquant

# The test modules import the shared cases by name (pytest runs with --import-mode=importlib,
# which does not put test folders on sys.path).
sys.path.insert(0, str(Path(__file__).parent))
from onnxcases import CASES, Exported, calibration


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


_CACHE: dict[tuple[str, str], Exported] = {}


@pytest.fixture(scope="session")
def exported(export_dir: Path) -> Callable[[str, str], Exported]:
    """``exported(case_name, mode)``: the model quantized in that mode and exported (cached)."""

    def get(name: str, mode: str) -> Exported:
        key = (name, mode)
        if key not in _CACHE:
            case = CASES[name]
            torch.manual_seed(0)
            model = case.build().eval()
            example = case.inputs(2, 0)
            qmodel = fxquant.quantize(model, example, calibration=calibration(case),
                                      config=fxquant.QuantConfig(mode=mode))
            path = export_dir / f"{name}_{mode}.onnx"
            result = fxquant.export_onnx(qmodel, path, example)
            _CACHE[key] = Exported(case, mode, model, qmodel, path, result)
        return _CACHE[key]

    return get
