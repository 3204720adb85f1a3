"""How a model is measured by ``PTQPipeline`` and ``QuantizationComparison``: size, latency and
peak memory (accuracy and output error: :mod:`fxquant.metrics`).

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
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

MB = 2**20


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


# --- size -------------------------------------------------------------------------------------


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


# --- latency ----------------------------------------------------------------------------------


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
    """Median and minimum of ``samples_ms`` (one forward pass each), and the throughput at the
    median for ``batch_size`` samples per pass."""
    median = statistics.median(samples_ms)
    return {
        "latency_ms": median,
        "latency_ms_min": min(samples_ms),
        "throughput_samples_per_s": batch_size / (median / 1e3),
    }


# --- peak memory ------------------------------------------------------------------------------


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
