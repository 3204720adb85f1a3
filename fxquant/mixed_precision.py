"""Mixed precision by budget: quantize, and keep the fewest, most sensitive layers at higher
precision (float, or more bits) until the quantized model meets an accuracy target on calibration
data.

    result = fxquant.quantize_to_target(model, example, AccuracyTarget("cosine", 0.999),
                                        batches=calibration, config=QuantConfig(weight_bits=4))
    result.model          # the quantized model meeting the target (if it can be met)
    print(result.table()) # what was kept, and why

1. The model is quantized with ``config`` and scored on ``batches`` against fp32 (``target``).
2. If the score misses the target, the per-layer error report (``fxquant.error_report``) ranks
   the layers by their sensitivity: the model's relative output error when that layer alone is
   quantized (every other layer fp32).
3. The most sensitive layers are kept one more at a time, in that order -- in float
   (``keep="float"``: ``QuantConfig.skip``) or at ``keep`` bits (e.g. 8 instead of 4:
   ``QuantConfig.layer_bits``) -- requantizing and scoring each time, until the target is met:
   the fewest layers, in sensitivity order, that meet it.

The returned model's record says, for every kept layer, that it was kept and why (its rank and
error); ``MixedPrecisionResult`` holds the trials.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tabulate import tabulate
from torch import nn

from .config import QuantConfig
from .errors import ConfigError, ExampleInputError
from .inputs import as_model_inputs
from .record import record_of
from .report import error_report, first_float_output

Metric = Literal["cosine", "relative_error", "top1_agreement"]
_METRICS = ("cosine", "relative_error", "top1_agreement")


@dataclass(frozen=True)
class AccuracyTarget:
    """What the quantized model must reach against fp32 on the calibration batches.

    ``metric``: ``"cosine"`` (mean cosine similarity of output vectors -- along the last axis,
    e.g. one per token of an LM's logits -- at least ``threshold``), ``"relative_error"``
    (``||y_q - y|| / ||y||`` over all outputs at most ``threshold``) or ``"top1_agreement"``
    (share of output vectors whose argmax agrees, at least ``threshold``).
    """

    metric: Metric = "cosine"
    threshold: float = 0.999

    def __post_init__(self) -> None:
        if self.metric not in _METRICS:
            raise ConfigError(
                f"unknown metric {self.metric!r}: choose one of {', '.join(_METRICS)}.")
        if not isinstance(self.threshold, (int, float)) or self.threshold < 0:
            raise ConfigError(f"threshold={self.threshold!r}: choose a non-negative number.")

    def score(self, outputs: list[torch.Tensor], references: list[torch.Tensor]) -> float:
        y = torch.cat([o.reshape(-1, o.shape[-1]).double() for o in outputs])
        ref = torch.cat([r.reshape(-1, r.shape[-1]).double() for r in references])
        if self.metric == "cosine":
            return float(torch.nn.functional.cosine_similarity(y, ref, dim=-1).mean())
        if self.metric == "relative_error":
            return float((y - ref).norm() / ref.norm().clamp(min=1e-30))
        return float((y.argmax(-1) == ref.argmax(-1)).double().mean())

    def met(self, score: float) -> bool:
        if self.metric == "relative_error":
            return score <= self.threshold
        return score >= self.threshold

    def describe(self) -> str:
        op = "<=" if self.metric == "relative_error" else ">="
        return f"{self.metric} {op} {self.threshold}"


@dataclass
class KeptLayer:
    """A layer kept out of int8 (or at other bits) to meet the target, and why."""
    name: str
    rank: int  # 1 = most sensitive
    sensitivity: float  # the model's relative output error with this layer alone quantized
    reason: str


@dataclass
class MixedPrecisionResult:
    """The quantized model and how it was reached."""

    model: nn.Module
    config: QuantConfig
    target: AccuracyTarget
    score: float
    met: bool
    kept: list[KeptLayer] = field(default_factory=list)
    trials: list[tuple[int, float]] = field(default_factory=list)  # (layers kept, score)
    sensitivities: dict[str, float] = field(default_factory=dict)
    keep: str | int = "float"

    @property
    def keep_description(self) -> str:
        return "in float" if self.keep == "float" else f"at {self.keep} bits"

    def table(self) -> str:
        status = "met" if self.met else "NOT met"
        head = (f"target {self.target.describe()}: {status} with {len(self.kept)} layer(s) kept "
                f"{self.keep_description}, score {self.score:.6g}")
        trials = ", ".join(f"{k} kept: {s:.6g}" for k, s in self.trials)
        rows = [(k.name, k.rank, f"{100 * k.sensitivity:.3g}%") for k in self.kept]
        parts = [head, f"trials: {trials}"]
        if rows:
            parts.append(tabulate(rows, headers=("kept layer", "sensitivity rank",
                                                 "model error, layer alone quantized")))
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.table()


def _outputs(model: nn.Module, batches: list[Any]) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for batch in batches:
            out = first_float_output(as_model_inputs(batch).call(model))
            if out is None:
                raise ExampleInputError(
                    f"{type(model).__name__} returned no floating-point tensor to score; "
                    "quantize_to_target compares the first float output (logits)."
                )
            outs.append(out)
    return outs


def _keeper(config: QuantConfig, keep: str | int) -> Any:
    """The config that keeps the named layers: skipped, or at ``keep`` bits."""
    if keep == "float":
        return lambda names: config.replace(skip=config.skip + names)
    if isinstance(keep, bool) or not isinstance(keep, int) or not 2 <= keep <= 8:
        raise ConfigError(f"keep={keep!r}: choose 'float' or a bit width from 2 to 8.")
    return lambda names: config.replace(
        layer_bits=config.layer_bits + tuple((name, keep) for name in names))


def _annotate_record(model: nn.Module, kept: list[KeptLayer]) -> None:
    """The record of ``model`` says why each kept layer is float."""
    record = record_of(model)
    if record is None:
        return
    reasons = {k.name: k.reason for k in kept}
    for layer in record.layers:
        if layer.name in reasons:
            layer.reason = reasons[layer.name]
    for module in record.float_modules:
        if module.name in reasons:
            module.reason = reasons[module.name]


def quantize_to_target(
    model: nn.Module,
    example_inputs: Any,
    target: AccuracyTarget,
    *,
    batches: Iterable[Any],
    config: QuantConfig | None = None,
    calibration: Iterable[Any] | None = None,
    keep: str | int = "float",
    max_kept: int | None = None,
    progress: bool | None = None,
) -> MixedPrecisionResult:
    """Quantize ``model`` with ``config``, keeping the fewest, most sensitive layers at higher
    precision so that ``target`` holds on ``batches`` (see the module docstring).

    Args:
        batches: the data the target is measured on (model inputs, e.g. calibration batches).
        calibration: static mode's calibration batches (default: ``batches``).
        keep: ``"float"`` (kept layers are skipped) or a bit width (2..8) for kept layers.
        max_kept: stop after keeping this many layers (default: all of them).

    Returns a :class:`MixedPrecisionResult`; ``met`` is False when even ``max_kept`` kept layers
    do not reach the target (the model returned is then the last one tried).
    """
    from .api import quantize  # late: fxquant.api imports fxquant's public modules

    config = config or QuantConfig()
    keeping = _keeper(config, keep)
    data = list(batches)
    if not data:
        raise ExampleInputError("quantize_to_target needs batches to measure the target on.")
    calib = list(calibration) if calibration is not None else data
    references = _outputs(model, data)

    def attempt(cfg: QuantConfig) -> tuple[nn.Module, float]:
        q = quantize(model, example_inputs, config=cfg, progress=progress,
                     calibration=calib if cfg.calibration_needed_by else None)
        return q, target.score(_outputs(q, data), references)

    qmodel, score = attempt(config)
    result = MixedPrecisionResult(qmodel, config, target, score, target.met(score),
                                  trials=[(0, score)], keep=keep)
    if result.met:
        return result
    ranked = sorted(error_report(model, qmodel, data).sensitivities().items(),
                    key=lambda item: item[1], reverse=True)
    result.sensitivities = dict(ranked)
    limit = len(ranked) if max_kept is None else min(max_kept, len(ranked))
    for k in range(1, limit + 1):
        cfg = keeping(tuple(name for name, _ in ranked[:k]))
        qmodel, score = attempt(cfg)
        result.trials.append((k, score))
        result.model, result.config, result.score = qmodel, cfg, score
        result.kept = [
            KeptLayer(name, rank, error, f"kept {result.keep_description} by quantize_to_target: "
                      f"sensitivity rank "
                      f"{rank} of {len(ranked)} (model output error {100 * error:.3g}% with this "
                      f"layer alone quantized); target {target.describe()}")
            for rank, (name, error) in enumerate(ranked[:k], start=1)]
        if target.met(score):
            result.met = True
            break
    _annotate_record(result.model, result.kept)
    return result
