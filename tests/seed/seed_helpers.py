"""Helpers shared by the seed toolkit's tests (the fixtures in conftest.py use them)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def seed_mlp() -> nn.Sequential:
    """The document's model: Linear(784, 512) -> ReLU -> Linear(512, 10)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10)).eval()


def labelled_loader(model: nn.Module, n: int = 256, batch_size: int = 32, seed: int = 1):
    """Random images labelled with ``model``'s own predictions."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 784, generator=generator)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def int8_keys(model: nn.Module) -> list[str]:
    return [k for k, v in model.state_dict().items() if v.dtype == torch.int8]
