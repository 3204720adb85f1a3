"""Shared test setup: deterministic seeds, a fixed thread count, pass contracts checked between
passes (``FXQUANT_VERIFY``, see ``fxquant/passes/infra.py``), and ``benchmarks`` importable.

Markers are registered in pyproject.toml; nothing else is registered here.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

torch.set_num_threads(2)
os.environ.setdefault("FXQUANT_VERIFY", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
