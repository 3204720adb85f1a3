"""Accuracy and output error of models over a data loader (``PTQPipeline.evaluate_accuracy``,
``QuantizationComparison``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .batches import batch_inputs, batch_labels, batch_size_of, to_device

Metric = Callable[[torch.Tensor, torch.Tensor], float]


def top1_accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose largest logit is the label."""
    return (outputs.argmax(dim=-1) == labels).float().mean().item()


def resolve_metric(metric: str | Metric | None) -> Metric | None:
    """The metric ``metric`` names: None or a callable as given, ``'accuracy'`` or ``'top1'`` is
    :func:`top1_accuracy`; any other name is a ValueError."""
    if metric is None or callable(metric):
        return metric
    if metric in ("accuracy", "top1"):
        return top1_accuracy
    raise ValueError(f"unknown metric {metric!r}: pass 'accuracy' or a callable(outputs, labels).")


@dataclass
class Evaluation:
    """What :func:`evaluate` measured: each model's mean metric, and the output MSE of each
    requested ``(model, reference)`` pair."""

    metric: dict[str, float] = field(default_factory=dict)
    mse: dict[tuple[str, str], float] = field(default_factory=dict)


def evaluate(
    models: Mapping[str, nn.Module],
    loader: Iterable[Any],
    *,
    metric: Metric | None = None,
    pairs: Sequence[tuple[str, str]] = (),
    device: torch.device | str = "cpu",
    num_batches: int | None = None,
) -> Evaluation:
    """One pass over ``loader``: each model's ``metric`` (sample-weighted mean over batches,
    when the batches carry labels) and the mean squared difference of the outputs of each
    ``(model, reference)`` pair."""
    metric_sums = dict.fromkeys(models, 0.0)
    squared = dict.fromkeys(pairs, 0.0)
    samples = elements = 0
    with torch.no_grad():
        for index, batch in enumerate(loader):
            if num_batches is not None and index >= num_batches:
                break
            inputs = to_device(batch_inputs(batch), device)
            labels = batch_labels(batch)
            outputs = {name: model(*inputs).float() for name, model in models.items()}
            n = batch_size_of(inputs)
            samples += n
            elements += next(iter(outputs.values())).numel()
            for name, out in outputs.items():
                if metric is not None and labels is not None:
                    metric_sums[name] += metric(out, labels.to(out.device)) * n
            for a, b in pairs:
                squared[(a, b)] += torch.sum((outputs[a] - outputs[b]) ** 2).item()
    if samples == 0:
        raise ValueError("the data loader is empty: evaluation needs at least one batch.")
    result = Evaluation(mse={pair: total / elements for pair, total in squared.items()})
    if metric is not None:
        result.metric = {name: total / samples for name, total in metric_sums.items()}
    return result
