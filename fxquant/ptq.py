"""Post-training quantization: the seed document's ``PTQPipeline``, as a thin driver of
``fxquant.prepare`` / ``fxquant.calibrate`` / ``fxquant.convert``.

    pipeline = PTQPipeline(trained_model, bits=8)
    pipeline.calibrate(calibration_loader, num_batches=10)   # DataLoader of (inputs, labels)
    quantized_model = pipeline.convert_to_real_quant()      # static int8 GraphModule
    original_size, quantized_size = pipeline.get_model_size()   # bytes

With calibration the pipeline builds a *static* int8 model (activation ranges measured ahead of
time); without it, a *dynamic* one (activations quantized per batch at run time), which needs
``example_inputs`` to capture the graph. Either way the quantized model is the GraphModule that
``fxquant.quantize`` returns: one pass pipeline, one implementation of the math.

The pipeline never changes the model it is given. It works on a float copy: a model produced by
``convert_to_real_quant`` or ``apply_fake_quant_to_model`` is first mapped back to plain
``nn.Linear`` layers (``real_quant.to_float_model``; int8 layers keep their codes exactly).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch.fx as fx
from torch import nn

from . import api, measure, metrics
from .batches import batch_inputs, batch_size_of
from .capture import as_input_tuple
from .config import QuantConfig
from .errors import CalibrationError, CaptureError
from .real_quant import quant_config_of, to_float_model
from .reduce_range import kernel_safe_reduce_range


class PTQPipeline:
    """Quantize a trained model without retraining.

    Args:
        model: the trained model (float, or the output of ``convert_to_real_quant`` /
            ``apply_fake_quant_to_model``). Not changed.
        bits: weight bits (2 to 8).
        config: a full :class:`fxquant.QuantConfig` instead of the defaults (fxquant's, or the
            scheme of the model's int8 layers, with ``reduce_range=True`` for 8-bit weights); its
            ``mode`` is set by the pipeline (static after :meth:`calibrate`, dynamic otherwise)
            and ``weight_bits`` by ``bits``.
        example_inputs: inputs to capture the model with when it is not calibrated.
    """

    def __init__(
        self,
        model: nn.Module,
        bits: int = 8,
        *,
        config: QuantConfig | None = None,
        example_inputs: Any = None,
    ) -> None:
        self.bits = bits
        if config is None:
            # The weight scheme of the model's int8 layers, if it has some (so their codes stay
            # the same), and 7-bit activations for 8-bit weights (exact on every x86 CPU).
            config = (quant_config_of(model) or QuantConfig()).replace(
                reduce_range=kernel_safe_reduce_range(bits, "static")
            )
        self.config = config.replace(weight_bits=bits)
        self.float_model = to_float_model(model).eval()
        self.example_inputs = None if example_inputs is None else as_input_tuple(example_inputs)
        self.calibration_batches = 0
        # What fxquant.prepare / convert / quantize return: a GraphModule for a model captured
        # whole, else the model with its regions compiled.
        self._observed: nn.Module | None = None
        self.quantized_model: nn.Module | None = None

    @property
    def calibrated(self) -> bool:
        return self._observed is not None

    def calibrate(self, loader: Iterable[Any], num_batches: int | None = 10) -> PTQPipeline:
        """Measure activation ranges on the first ``num_batches`` batches of ``loader`` (all of
        them with ``None``). A batch is ``(inputs, labels)``, ``inputs`` or a tensor. Calling
        again adds more batches to the same ranges. Returns the pipeline."""
        batches = iter(loader) if num_batches is None else itertools.islice(loader, num_batches)
        first = next(batches, None)
        if first is None:
            raise CalibrationError("PTQPipeline.calibrate got no batches: the loader is empty.")
        inputs = batch_inputs(first)
        if self._observed is None:
            config = self.config.replace(mode="static")
            self._observed = api.prepare(self.float_model, inputs, config)
        api.calibrate(
            self._observed, (batch_inputs(b) for b in itertools.chain([first], batches))
        )
        self.calibration_batches += _calibrated_now(self._observed)
        self.example_inputs = self.example_inputs if self.example_inputs is not None else inputs
        self.quantized_model = None
        return self

    def convert_to_real_quant(self) -> nn.Module:
        """The int8 model: static if calibrated, else dynamic. Built once, then returned again."""
        if self.quantized_model is None:
            if self._observed is not None:
                self.quantized_model = api.convert(self._observed)
            elif self.example_inputs is not None:
                config = self.config.replace(mode="dynamic")
                self.quantized_model = api.quantize(
                    self.float_model, self.example_inputs, config=config
                )
            else:
                raise CalibrationError(
                    "PTQPipeline needs data to capture the model: call calibrate(loader) first "
                    "(static int8), or pass example_inputs=... to PTQPipeline (dynamic int8)."
                )
        return self.quantized_model

    def quantize_weights(self) -> nn.Module:
        """The document's name for the same step: quantize all weights to int8 (and the
        activations as calibrated). Returns the quantized model."""
        return self.convert_to_real_quant()

    def get_model_size(self) -> tuple[int, int]:
        """``(original_bytes, quantized_bytes)``: bytes of the tensors in each ``state_dict``.
        The original is the float model (for a converted input, its float equivalent)."""
        return (
            measure.model_size_bytes(self.float_model),
            measure.model_size_bytes(self.convert_to_real_quant()),
        )

    def benchmark_inference(
        self,
        inputs: Any = None,
        *,
        num_runs: int = 100,
        warmup: int = 10,
    ) -> dict[str, float]:
        """Latency (median ms per batch) and throughput (samples/s) of the original and the
        quantized model on ``inputs`` -- a batch, ``(inputs, labels)`` or a tensor -- (default:
        the first calibration batch, or ``example_inputs``)."""
        if inputs is not None:
            inputs = batch_inputs(inputs)
        elif self.example_inputs is not None:
            inputs = self.example_inputs
        else:
            raise CalibrationError("benchmark_inference needs inputs: pass a batch.")
        models = {"original": self.float_model, "quantized": self.convert_to_real_quant()}
        runs_per_round = max(1, num_runs // 20)
        samples = measure.time_models(
            models,
            inputs,
            warmup=warmup,
            rounds=max(1, num_runs // runs_per_round),
            runs_per_round=runs_per_round,
        )
        batch = batch_size_of(inputs)
        result: dict[str, float] = {"batch_size": batch}
        for name, times in samples.items():
            summary = measure.latency_summary(times, batch)
            result[f"{name}_latency_ms"] = summary["latency_ms"]
            result[f"{name}_throughput"] = summary["throughput_samples_per_s"]
        result["speedup"] = result["original_latency_ms"] / result["quantized_latency_ms"]
        return result

    def evaluate_accuracy(
        self,
        loader: Iterable[Any],
        *,
        num_batches: int | None = None,
        metric: str | metrics.Metric = "accuracy",
    ) -> dict[str, float]:
        """Top-1 accuracy (or ``metric(outputs, labels)``) of the original and the quantized
        model on a loader of ``(inputs, labels)``, and the output MSE between them."""
        models = {"original": self.float_model, "quantized": self.convert_to_real_quant()}
        scores = metrics.evaluate(
            models,
            loader,
            metric=metrics.resolve_metric(metric),
            pairs=[("quantized", "original")],
            num_batches=num_batches,
        )
        return {
            "original": scores.metric["original"],
            "quantized": scores.metric["quantized"],
            "drop": scores.metric["original"] - scores.metric["quantized"],
            "output_mse": scores.mse[("quantized", "original")],
        }


def _calibrated_now(observed: nn.Module) -> int:
    """How many batches the last ``fxquant.calibrate`` ran (the calibrate pass records it in a
    GraphModule's ``meta``)."""
    if not isinstance(observed, fx.GraphModule):
        raise CaptureError(
            f"PTQPipeline calibrates models captured whole; {type(observed).__name__} was "
            "compiled region by region: use fxquant.prepare / calibrate / convert for it."
        )
    return observed.meta["fxquant"]["calibration_batches"]
