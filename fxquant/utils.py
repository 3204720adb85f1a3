"""Helpers the seed toolkit shares: the document's ``symmetric_quantize``, and how a model is
measured (size, latency, peak memory, accuracy, output error) by ``PTQPipeline`` and
``QuantizationComparison``.

Every quantization formula comes from :mod:`fxquant.numerics`; this module only wires it to
autograd (straight-through estimator) and measures models.

Measurement conventions (docs/seed_toolkit.md):
  * size: bytes of the tensors in ``state_dict()`` (shared storage counted once); MB = 2**20 B.
  * latency: median wall time of one forward pass on one batch, models timed in interleaved
    rounds so that load on the machine hits all of them alike; throughput = batch / latency.
  * peak memory: measured, not computed -- the growth of the process's peak resident set (Linux
    ``VmHWM``, reset through ``/proc/self/clear_refs`` after ``malloc_trim`` hands free heap
    pages back, so new allocations must fault in fresh pages) while a fresh copy of the model is
    made and runs one batch. It includes what the kernels allocate outside PyTorch (fbgemm's
    packed weights). ``None`` where the platform cannot reset the peak.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import gc
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import numerics
from .config import Mode, QuantConfig

MB = 2**20
Metric = Callable[[torch.Tensor, torch.Tensor], float]


# --- quantization with gradients ---------------------------------------------------------------


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        return quantized.view_as(quantized)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def straight_through(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Exactly ``quantized`` in the forward pass; in the backward pass the gradient goes to
    ``x`` unchanged, as if the rounding were the identity (straight-through estimator)."""
    return _StraightThrough.apply(x, quantized.detach())


def symmetric_quantize(x: torch.Tensor, bits: int = 8, axis: int | None = None) -> torch.Tensor:
    """Round ``x`` to a symmetric ``bits``-bit grid (quantize then dequantize), one scale for
    the tensor or one per slice along ``axis``; gradients pass straight through.

    The grid is the one fxquant's int8 weights use: ``scale = max|x| / (2^(bits-1) - 1)``, codes
    in ``[-(2^(bits-1)-1), 2^(bits-1)-1]``, round half to even.
    """
    lo, hi = numerics.reduce_min_max(x, axis)
    scale, zero_point = numerics.weight_qparams(lo, hi, bits, symmetric=True)
    if axis is None:
        scale, zero_point = scale.reshape(()), zero_point.reshape(())
    qrange = numerics.weight_qrange(bits, symmetric=True)
    with torch.no_grad():
        quantized = numerics.fake_quantize(x.detach(), scale, zero_point, qrange, axis=axis)
    return straight_through(x, quantized)


def kernel_safe_reduce_range(bits: int, mode: Mode = "dynamic") -> bool:
    """Whether ``bits``-bit weights need 7-bit activations to keep fxquant's int8 kernel exact:
    true for 8-bit weights with int8 activations (``QuantConfig.may_saturate``: on AVX2 CPUs
    without VNNI, pairs of u8 x s8 products saturate in 16 bits). Narrower weights keep 8-bit
    activations, as fxquant's defaults do."""
    # The seed layers quantize with plain min-max scales (no pair-safe scales), as the document
    # describes; with 8 bits they keep the kernel exact through 7-bit activations instead.
    config = QuantConfig(mode=mode, weight_bits=bits, reduce_range=False, pair_safe_weights=False)
    return config.may_saturate


# --- batches -----------------------------------------------------------------------------------


def batch_inputs(batch: Any) -> tuple[Any, ...]:
    """The model inputs of one batch: ``(inputs, labels)`` gives ``(inputs,)`` (a tuple of
    inputs is spread), a lone tensor gives ``(tensor,)``."""
    if isinstance(batch, (tuple, list)):
        first = batch[0]
        return tuple(first) if isinstance(first, (tuple, list)) else (first,)
    return (batch,)


def batch_labels(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, (tuple, list)) and len(batch) > 1:
        return batch[1]
    return None


def first_batch(loader: Iterable[Any]) -> Any:
    for batch in loader:
        return batch
    raise ValueError("the data loader is empty: measurements need at least one batch.")


def _to(inputs: tuple[Any, ...], device: torch.device | str) -> tuple[Any, ...]:
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in inputs)


def batch_size_of(inputs: tuple[Any, ...]) -> int:
    for a in inputs:
        if isinstance(a, torch.Tensor) and a.dim() > 0:
            return int(a.shape[0])
    return 1


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put models in eval mode and give every submodule its training flag back afterwards."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for module, training in flags:
            module.training = training


# --- size --------------------------------------------------------------------------------------


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of the tensors in ``model.state_dict()``; tensors sharing memory count once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in model.state_dict().values():
        if not isinstance(tensor, torch.Tensor):
            continue
        nbytes = tensor.numel() * tensor.element_size()
        key = (tensor.data_ptr(), nbytes)
        if key not in seen:
            seen.add(key)
            total += nbytes
    return total


# --- latency -----------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_models(
    models: Mapping[str, nn.Module],
    inputs: tuple[Any, ...],
    *,
    warmup: int = 10,
    rounds: int = 25,
    runs_per_round: int = 10,
) -> dict[str, list[float]]:
    """Milliseconds per forward pass of each model on ``inputs``: one sample per round.

    Rounds interleave the models, so a burst of load on the machine slows all of them alike
    instead of whichever was being timed. Take the median of each list.
    """
    device = next((a.device for a in inputs if isinstance(a, torch.Tensor)), torch.device("cpu"))
    samples: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            for _ in range(warmup):
                model(*inputs)
        for _ in range(rounds):
            for name, model in models.items():
                _sync(device)
                start = time.perf_counter()
                for _ in range(runs_per_round):
                    model(*inputs)
                _sync(device)
                samples[name].append((time.perf_counter() - start) / runs_per_round * 1e3)
    return samples


def latency_summary(samples_ms: list[float], batch_size: int) -> dict[str, float]:
    median = statistics.median(samples_ms)
    return {
        "latency_ms": median,
        "latency_ms_min": min(samples_ms),
        "throughput_samples_per_s": batch_size / (median / 1e3),
    }


# --- peak memory -------------------------------------------------------------------------------


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
        return True
    except OSError:
        return False


_LIBC = ctypes.util.find_library("c")


def _release_free_memory() -> None:
    """Collect garbage and hand free heap pages back to the OS, so that new allocations must
    fault in fresh pages and show in the resident set."""
    gc.collect()
    if _LIBC:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(_LIBC).malloc_trim(0)


def _peak_rss_once(model: nn.Module, inputs: tuple[Any, ...]) -> float | None:
    _release_free_memory()
    base = _status_bytes("VmRSS")
    if base is None or not _reset_peak_rss():
        return None
    work = copy.deepcopy(model)
    with torch.no_grad():
        work(*inputs)
    peak = _status_bytes("VmHWM")
    del work
    return None if peak is None else max(peak - base, 0) / MB


def _peak_cuda(model: nn.Module, inputs: tuple[Any, ...], device: torch.device) -> float:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    work = copy.deepcopy(model)
    with torch.no_grad():
        work(*inputs)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del work
    return (peak - base) / MB


def peak_memory_mb(model: nn.Module, inputs: tuple[Any, ...], repeats: int = 3) -> float | None:
    """Measured memory, in MB, that holding a copy of ``model`` and running it on ``inputs`` adds
    at its peak (median of ``repeats``). On CPU: growth of the process's peak resident set; on
    CUDA: growth of the allocator's peak. Run the model once before, so one-time
    initialisation is not counted. ``None`` where the peak cannot be reset (not Linux)."""
    device = next((a.device for a in inputs if isinstance(a, torch.Tensor)), torch.device("cpu"))
    if device.type == "cuda":
        return statistics.median(_peak_cuda(model, inputs, device) for _ in range(repeats))
    values = [_peak_rss_once(model, inputs) for _ in range(repeats)]
    if any(v is None for v in values):
        return None
    return statistics.median(values)  # type: ignore[type-var]


# --- accuracy and error ------------------------------------------------------------------------


def top1_accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose largest logit is the label."""
    return (outputs.argmax(dim=-1) == labels).float().mean().item()


def resolve_metric(metric: str | Metric | None) -> Metric | None:
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
            inputs = _to(batch_inputs(batch), device)
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
