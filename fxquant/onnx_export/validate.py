"""Validation on request: ONNX Runtime against the function the file encodes, in quantization units.

The reference is the model's export twin (:mod:`.twin`), run with fxquant's reference
kernels: the file and the twin do the same integer arithmetic. The unit is what quantizing the
activations costs on the same inputs: the twin against the same model with float activations (its
int8 weights kept, :func:`.twin.float_activation_reference`). For every output, over the
positions the caller's ``attention_mask`` marks real (padding never counts):

    error = rms(ORT - twin)        unit = rms(twin - float-activation twin)        scale = rms(twin)

    passed  when  error <= units * unit + relative * scale          (BOUNDS, per mode)

    dynamic, static      units 2, relative 1e-4
    weight_only, float   (no activation rounding: unit 0) relative 1e-4, as float rounding

Why these units: the file and the twin differ only where ONNX Runtime's float ops (LayerNorm,
GELU, softmax) differ from PyTorch's in the last bits and a value sitting on a rounding boundary
of the next activation quantizer lands on the neighbouring code. Such flips are rare, so their
error is a small fraction of the rounding error of all activations, however deep the model or
large its activations: measured 0.00-0.05 units on the test models, 0.0x on GPT-2 small (where a
fixed relative bound failed: rms 0.021 against 0.01, its outlier activations make each flip
large). A wrong scale, zero-point or layout moves a whole layer: measured >= 1 unit (a 10%
error in one scale tensor of a 2-layer model), the AVX2 saturation 3-10 units.

Logits also report top-1 agreement (argmax of ORT = argmax of the twin), for information.

ONNX Runtime turns weight-only ``DequantizeLinear -> MatMul`` into ``MatMulNBits``, which by
default quantizes activations to int8 per block (``session.qdq_matmulnbits_accuracy_level`` 4);
validation sets that level to 0 so it checks the file itself, not that runtime trade-off.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

from .. import cpu, ops
from ..errors import ExportError
from .spec import ValidationCase

# mode -> (units of activation rounding, relative to rms(twin))
BOUNDS = {
    "dynamic": (2.0, 1e-4),
    "static": (2.0, 1e-4),
    "weight_only": (0.0, 1e-4),
    "float": (0.0, 1e-4),
}


@dataclass(frozen=True)
class OutputCheck:
    """One output of one validation run, held to its bound against the twin."""

    name: str
    case: str  # which validation run ("example", "prefill", "decode 1", ...)
    error: float  # rms(ORT - twin) over the real positions
    unit: float  # rms(twin - float-activation twin): the activation rounding
    scale: float  # rms(twin)
    max_abs_diff: float  # max|ORT - twin|
    bounds: tuple[float, float]  # (units, relative)
    top1: float | None = None  # logits: share of positions where ORT's argmax is the twin's
    positions: int = 0  # elements compared (padding excluded)

    @property
    def units(self) -> float:
        """The error in units of activation rounding (inf where there is no rounding)."""
        return self.error / self.unit if self.unit > 0 else (0.0 if self.error == 0 else np.inf)

    @property
    def rms(self) -> float:
        """The error relative to the output: rms(ORT - twin) / rms(twin)."""
        return self.error / max(self.scale, np.finfo(np.float32).tiny)

    @property
    def max(self) -> float:
        """max|ORT - twin| relative to the output's rms."""
        return self.max_abs_diff / max(self.scale, np.finfo(np.float32).tiny)

    @property
    def limit(self) -> float:
        return self.bounds[0] * self.unit + self.bounds[1] * self.scale

    @property
    def passed(self) -> bool:
        return self.error <= self.limit


@dataclass(frozen=True)
class ValidationReport:
    """Every output check of a validation, with the bounds they were held to."""

    mode: str
    bounds: tuple[float, float]  # (units of activation rounding, relative)
    outputs: tuple[OutputCheck, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def worst(self) -> OutputCheck | None:
        """The check closest to (or furthest beyond) its limit."""
        return max(self.outputs, key=lambda o: o.error / max(o.limit, 1e-30), default=None)


def _selected(values: np.ndarray, mask: torch.Tensor | None) -> np.ndarray:
    if mask is None:
        return values.reshape(-1)
    keep = np.broadcast_to(mask.numpy(), values.shape)
    return values[keep]


def _top1(got: np.ndarray, expected: np.ndarray, mask: torch.Tensor | None) -> float | None:
    rows_got, rows_ref = got.reshape(-1, got.shape[-1]), expected.reshape(-1, got.shape[-1])
    agree = rows_got.argmax(-1) == rows_ref.argmax(-1)
    if mask is not None:
        keep = np.broadcast_to(mask.numpy(), got.shape)[..., 0].reshape(-1)
        agree = agree[keep]
    return float(agree.mean()) if agree.size else None


def check_output(
    name: str, case: str, got: np.ndarray, expected: torch.Tensor, floats: torch.Tensor,
    mask: torch.Tensor | None, bounds: tuple[float, float],
) -> OutputCheck:
    """One output of one run, over the positions ``mask`` keeps (None: all)."""
    ref = expected.detach().double().numpy()
    o = _selected(np.asarray(got, dtype=np.float64), mask)
    t = _selected(ref, mask)
    f = _selected(floats.detach().double().numpy(), mask)
    n = max(t.size, 1)
    diff = np.abs(o - t)
    return OutputCheck(
        name, case,
        error=float(np.sqrt((diff**2).sum() / n)),
        unit=float(np.sqrt(((t - f) ** 2).sum() / n)),
        scale=float(np.sqrt((t**2).sum() / n)),
        max_abs_diff=float(diff.max(initial=0.0)),
        bounds=bounds,
        top1=_top1(np.asarray(got), ref, mask) if name == "logits" and ref.ndim >= 2 else None,
        positions=int(t.size),
    )


def ort_session(model: str | os.PathLike[str] | bytes):
    """An ONNX Runtime CPU session for validation (MatMulNBits kept in float, see above)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _flat(outputs) -> list[torch.Tensor]:
    return [t.detach().float() for t in pytree.tree_leaves(outputs)]


def validate_cases(
    model: str | os.PathLike[str] | bytes,
    cases: Sequence[ValidationCase],
    floats: nn.Module,
    input_names: Sequence[str],
    output_names: Sequence[str],
    mode: str,
    matmul_weights: str = "auto",
) -> ValidationReport:
    """Run every case in ONNX Runtime and ``floats`` (the float-activation twin, wrapped like the
    traced module); compare with the twin's outputs the cases carry. ExportError (with the
    numbers) when an output is out of bounds."""
    try:
        sess = ort_session(model)
    except Exception as exc:
        raise ExportError(f"ONNX Runtime could not load the exported model: {exc}") from exc
    bounds = BOUNDS[mode]
    checks: list[OutputCheck] = []
    for case in cases:
        feeds = {n: t.numpy() for n, t in zip(input_names, case.inputs, strict=True)}
        try:
            got = sess.run(None, feeds)
        except Exception as exc:
            raise ExportError(
                f"ONNX Runtime could not run the exported model on the {case.name} inputs: {exc}"
            ) from exc
        with torch.no_grad(), ops.reference_kernels():
            float_out = _flat(floats(*case.inputs))
        checks += [
            check_output(name, case.name, y, ref, flo, case.masks.get(name), bounds)
            for name, y, ref, flo in zip(output_names, got, case.expected, float_out, strict=True)
        ]
    report = ValidationReport(mode, bounds, tuple(checks))
    if not report.passed:
        raise ExportError(_failure_message(report, matmul_weights))
    return report


def _saturating_cpu() -> bool:
    """True on x86 CPUs with AVX2 but no VNNI, where ONNX Runtime's u8 x s8 GEMM saturates."""
    return cpu.onnxruntime_saturates()


def _hint(mode: str, matmul_weights: str) -> str:
    if mode not in ("dynamic", "static"):
        return (" The file and the model compute the same float function here, so this is not "
                "rounding: please report it with this message.")
    if _saturating_cpu() and matmul_weights != "uint8":
        which = ("matmul_weights='int8' writes ONNX Runtime's own pattern, which saturates there"
                 if matmul_weights == "int8" else
                 "matmul_weights='auto' (the default) keeps int8 weights only where no pair of "
                 "codes can saturate")
        return (f" This CPU has AVX2 but no VNNI: ONNX Runtime's uint8 x int8 GEMM adds pairs of "
                f"products in 16 bits there; {which}. Export with matmul_weights='uint8' (exact "
                "on every CPU) to rule the kernel out.")
    return (" A correct file stays within a fraction of a unit (only rare rounding flips "
            "differ); this is a real mismatch (a scale, zero-point or layout): please report it "
            "with this message.")


def _failure_message(report: ValidationReport, matmul_weights: str) -> str:
    bad = [o for o in report.outputs if not o.passed][:4]
    lines = [
        f"{o.name} ({o.case}): error rms {o.error:.3g} = {o.units:.3g} units of activation "
        f"rounding (unit {o.unit:.3g}; {o.rms:.3g} of the output's rms), limit {o.limit:.3g}"
        for o in bad
    ]
    units, relative = report.bounds
    return (
        f"ONNX Runtime disagrees with the {report.mode} model: " + "; ".join(lines)
        + f" (bounds: {units:g} units + {relative:g} x rms)." + _hint(report.mode, matmul_weights)
    )
