"""Validation on request: run the file in ONNX Runtime and compare with the function it encodes.

The reference is the GraphModule's export twin (:mod:`.reference`), run with fxquant's reference
kernels: the file and the twin do the same integer arithmetic. Two numbers per output, relative
to the reference (docs/onnx.md explains the bounds):

    rms  = ||ORT - ref||_2 / ||ref||_2          max = max|ORT - ref| / max|ref|

    dynamic, static   rms <= 1e-2, max <= 5e-2
    weight_only       rms <= 1e-4, max <= 1e-3

Why integer modes get more room than float rounding would need: ONNX Runtime's float ops
(LayerNorm, GELU, softmax) differ from PyTorch's in the last bits, and a value that sits on a
rounding boundary of the next quantizer then lands on the neighbouring code. Such flips are rare
and each moves its outputs by about one activation step times a weight (measured: rms 3e-3,
max 6e-3 on a 2-layer GPT-2 at batch 7, and exactly 0 on most inputs). Real faults are far larger:
the uint8 x int8 saturation of ONNX Runtime's AVX2 kernel measured rms 0.03 to 0.17 on the test
models; a wrong scale, zero-point or layout is larger still.

ONNX Runtime turns weight-only ``DequantizeLinear -> MatMul`` into ``MatMulNBits``, which by
default quantizes activations to int8 per block (``session.qdq_matmulnbits_accuracy_level`` 4);
validation sets that level to 0 so it checks the file itself, not that runtime trade-off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from .. import cpu, ops
from ..errors import ExportError

# mode -> (relative RMS bound, relative max bound)
BOUNDS = {
    "dynamic": (1e-2, 5e-2),
    "static": (1e-2, 5e-2),
    "weight_only": (1e-4, 1e-3),
    "float": (1e-4, 1e-3),
}


@dataclass(frozen=True)
class OutputCheck:
    name: str
    rms: float  # ||ORT - twin|| / ||twin||
    max: float  # max|ORT - twin| / max|twin|
    max_abs_diff: float
    max_abs_diff_vs_model: float  # ORT vs the GraphModule as converted (7-bit codes and all)
    bounds: tuple[float, float]

    @property
    def passed(self) -> bool:
        return self.rms <= self.bounds[0] and self.max <= self.bounds[1]


@dataclass(frozen=True)
class ValidationReport:
    mode: str
    bounds: tuple[float, float]  # (rms, max), relative
    outputs: tuple[OutputCheck, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)


def compare(
    name: str,
    got: np.ndarray,
    reference: np.ndarray,
    as_converted: np.ndarray,
    bounds: tuple[float, float],
) -> OutputCheck:
    diff = np.abs(got.astype(np.float64) - reference.astype(np.float64))
    ref_norm = float(np.sqrt((reference.astype(np.float64) ** 2).sum()))
    ref_max = float(np.abs(reference).max(initial=0.0))
    tiny = np.finfo(np.float32).tiny
    return OutputCheck(
        name,
        rms=float(np.sqrt((diff**2).sum())) / max(ref_norm, tiny),
        max=float(diff.max(initial=0.0)) / max(ref_max, tiny),
        max_abs_diff=float(diff.max(initial=0.0)),
        max_abs_diff_vs_model=float(np.abs(got - as_converted).max(initial=0.0)),
        bounds=bounds,
    )


def _saturating_cpu() -> bool:
    """True on x86 CPUs with AVX2 but no VNNI, where ONNX Runtime's u8 x s8 GEMM saturates."""
    return cpu.onnxruntime_saturates()


def _session(model_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _flat(outputs) -> list[np.ndarray]:
    return [t.detach().float().numpy() for t in pytree.tree_leaves(outputs)]


def run_validation(
    model_bytes: bytes,
    twin: torch.nn.Module,
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    mode: str,
) -> ValidationReport:
    """Compare ONNX Runtime with the twin; ExportError (with the numbers) when out of bounds."""
    try:
        session = _session(model_bytes)
        got = session.run(None, {n: t.numpy() for n, t in zip(input_names, inputs, strict=True)})
    except Exception as exc:
        raise ExportError(f"ONNX Runtime could not run the exported model: {exc}") from exc
    with torch.no_grad(), ops.reference_kernels():
        expected = _flat(twin(*inputs))
        as_converted = _flat(model(*inputs))
    bounds = BOUNDS[mode]
    checks = tuple(
        compare(name, np.asarray(y, dtype=np.float32), ref, conv, bounds)
        for name, y, ref, conv in zip(output_names, got, expected, as_converted, strict=True)
    )
    report = ValidationReport(mode, bounds, checks)
    if not report.passed:
        raise ExportError(_failure_message(report))
    return report


def _failure_message(report: ValidationReport) -> str:
    bad = [o for o in report.outputs if not o.passed]
    lines = [
        f"{o.name}: relative error rms {o.rms:.3g}, max {o.max:.3g} (bounds {o.bounds[0]:g}, "
        f"{o.bounds[1]:g})"
        for o in bad
    ]
    hint = ""
    if report.mode in ("dynamic", "static") and _saturating_cpu():
        hint = (
            " This CPU has AVX2 but no VNNI: ONNX Runtime's uint8 x int8 GEMM saturates there "
            "for weight codes beyond +-64. Export with matmul_weights='auto' or 'uint8' "
            "(exact on every CPU), or quantize with weight_bits=7 (fxquant's default)."
        )
    return f"ONNX Runtime disagrees with the {report.mode} model: " + "; ".join(lines) + "." + hint


def twin_of(model: torch.nn.Module, converted: tuple[tuple[str, fx.GraphModule], ...]):
    """The export twin of ``model``: each converted GraphModule inside replaced by its twin."""
    import copy

    from .reference import export_reference

    if len(converted) == 1 and converted[0][0] == "":
        return export_reference(converted[0][1])
    twin = copy.deepcopy(model)
    for name, gm in converted:
        parent_name, _, child = name.rpartition(".")
        parent = twin.get_submodule(parent_name) if parent_name else twin
        setattr(parent, child, export_reference(gm))
    return twin
