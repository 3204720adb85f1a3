"""Fixtures for the seed toolkit's tests: the document's MLP and small data loaders.

Labels are the fp32 model's own predictions, so "accuracy" of a quantized copy is its agreement
with fp32 and the tests need no training.
"""

from __future__ import annotations

import pytest
from seed_helpers import labelled_loader, seed_mlp
from torch import nn


@pytest.fixture
def mlp() -> nn.Sequential:
    return seed_mlp()


@pytest.fixture
def calibration_loader(mlp):
    return labelled_loader(mlp, seed=1)


@pytest.fixture
def test_loader(mlp):
    return labelled_loader(mlp, n=128, seed=2)
