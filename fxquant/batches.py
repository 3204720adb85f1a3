"""Batches as the seed toolkit's loaders give them: ``(inputs, labels)`` pairs, tuples of inputs,
or lone tensors."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def batch_inputs(batch: Any) -> tuple[Any, ...]:
    """The model inputs of one batch: ``(inputs, labels)`` gives ``(inputs,)`` (a tuple of
    inputs is spread), a lone tensor gives ``(tensor,)``."""
    if isinstance(batch, (tuple, list)):
        first = batch[0]
        return tuple(first) if isinstance(first, (tuple, list)) else (first,)
    return (batch,)


def batch_labels(batch: Any) -> torch.Tensor | None:
    """The labels of an ``(inputs, labels)`` batch, or None for a batch without them."""
    if isinstance(batch, (tuple, list)) and len(batch) > 1:
        return batch[1]
    return None


def first_batch(loader: Iterable[Any]) -> Any:
    """The first batch of ``loader``; ValueError when it is empty."""
    for batch in loader:
        return batch
    raise ValueError("the data loader is empty: measurements need at least one batch.")


def to_device(inputs: tuple[Any, ...], device: torch.device | str) -> tuple[Any, ...]:
    """``inputs`` with every tensor moved to ``device`` (other values as they are)."""
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in inputs)


def batch_size_of(inputs: tuple[Any, ...]) -> int:
    """The leading dimension of the first input tensor that has one, else 1."""
    for a in inputs:
        if isinstance(a, torch.Tensor) and a.dim() > 0:
            return int(a.shape[0])
    return 1
