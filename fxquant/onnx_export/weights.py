"""int8 weights as ONNX initializers: layout, naming, sharing and per-tensor collapse.

* A linear weight is stored transposed, ``[in, out]``, the layout ``MatMul`` / ``MatMulInteger``
  read (as ONNX Runtime's quantizer stores it); its scales then run along axis 1.
* Embedding tables and conv weights keep their PyTorch layout; scales run along axis 0.
* One int8 buffer used both ways (GPT-2's tied embedding and ``lm_head``) is stored once, in
  PyTorch layout, and the linear reads it through a ``Transpose`` node: the file holds the table
  once, as the GraphModule does.
* Per-tensor weights (all scales and zero-points equal) get scalar parameters, so they need no
  per-axis support and match what ONNX Runtime's own per-tensor quantizer writes.
* Zero-points have the codes' type, as ONNX requires.
* Codes are int8, or uint8 (codes and zero-points + 128, the same values) for integer layers whose
  codes could saturate ONNX Runtime's AVX2 kernel (see :mod:`.scheme`); a buffer is stored once,
  in the one type all its readers accept.
* Names follow ``<layer>.<role>``: ``layers.0.fc.w_int8`` (or ``.w_uint8``), ``.w_scale``,
  ``.w_zp``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from ..errors import ExportError
from .builder import GraphBuilder
from .scheme import CodesType

Layout = Literal["stored", "transposed"]


@dataclass(frozen=True)
class OnnxWeight:
    """Names of a quantized weight's tensors in the ONNX graph; ``axis`` None = per-tensor."""

    codes: str
    scale: str
    zero_point: str
    axis: int | None
    source: str


@dataclass(frozen=True)
class WeightUse:
    """One placeholder's use of an int8 buffer: the layout it reads and the codes type its
    kernel wants."""

    codes: str
    layout: Layout
    codes_type: CodesType = "int8"
    integer: bool = False  # read by an integer kernel (not only dequantized to float)


@dataclass
class _Plan:
    layouts: set[Layout]
    codes_type: CodesType


def plan_weights(uses: Iterable[WeightUse]) -> dict[str, _Plan]:
    """For each buffer: the layouts its users read, and uint8 if any user needs uint8 (then
    every user reads uint8 codes, so the buffer is still stored once)."""
    plan: dict[str, _Plan] = {}
    for use in uses:
        entry = plan.setdefault(use.codes, _Plan(set(), "int8"))
        entry.layouts.add(use.layout)
        if use.codes_type == "uint8":
            entry.codes_type = "uint8"
    return plan


def _int8_zero_point(zp: np.ndarray, codes_name: str) -> np.ndarray:
    if zp.size and (zp.min() < -128 or zp.max() > 127):
        raise ExportError(f"zero-points of {codes_name} do not fit in int8; cannot export.")
    return zp.astype(np.int8)


def _as_codes_type(q: np.ndarray, z: np.ndarray, codes_type: CodesType):
    """int8 codes and zero-points, or both shifted by 128 into uint8: (q+128) - (z+128) = q - z,
    so the dequantized values are identical."""
    if codes_type == "int8":
        return q, z
    shift = lambda a: (a.astype(np.int16) + 128).astype(np.uint8)  # noqa: E731
    return shift(q), shift(z)


class WeightTable:
    """Hands out the ONNX tensors of each int8 weight, creating them on first use."""

    def __init__(self, builder: GraphBuilder, sources: Mapping[str, str],
                 plan: Mapping[str, _Plan]) -> None:
        self.b = builder
        self.sources = sources
        self.plan = plan
        self.weights: list[OnnxWeight] = []

    def source(self, codes: str) -> str:
        """The layer an int8 buffer belongs to (from the GraphModule's node metadata)."""
        if codes in self.sources:
            return self.sources[codes]
        return codes.removeprefix("fxq.").removesuffix("_w_int8")

    def get(self, codes: str, scale: str, zero_point: str, layout: Layout,
            axis: int = 0) -> OnnxWeight:
        for name in (codes, scale, zero_point):
            if self.b.constant(name) is None:
                raise ExportError(
                    f"quantized weight tensor {name!r} is computed in the graph; fxquant exports "
                    "int8 weights only as constants."
                )
        plan = self.plan.get(codes, _Plan({layout}, "int8"))
        store_transposed = plan.layouts == {"transposed"}
        stored = self._stored(codes, scale, zero_point, store_transposed, axis, plan.codes_type)
        if layout == "transposed" and not store_transposed:
            return self._transposed_view(stored)
        return stored

    def _stored(self, codes: str, scale: str, zero_point: str, transposed: bool,
                axis: int, codes_type: CodesType) -> OnnxWeight:
        key = ("stored", codes)
        found = self.b.memo(key)
        if found is not None:
            return found
        q = self.b.array(codes)
        if q.dtype != np.int8:
            raise ExportError(f"{codes} holds {q.dtype}, not int8 codes.")
        # any rank: per-channel (1-D) until found to be per-tensor (0-D)
        s: np.ndarray = self.b.array(scale).astype(np.float32).reshape(-1)
        z = _int8_zero_point(self.b.array(zero_point).reshape(-1), codes)
        if transposed:
            if q.ndim != 2:
                raise ExportError(f"{codes} is {q.ndim}-D; a linear weight must be 2-D.")
            q, axis = q.T, 1
        per_tensor = bool((s == s[0]).all() and (z == z[0]).all())
        if per_tensor:
            s, z = s[:1].reshape(()), z[:1].reshape(())
        q, z = _as_codes_type(q, z, codes_type)
        source = self.source(codes)
        weight = OnnxWeight(
            codes=self.b.initializer(f"{source}.w_{codes_type}", q),
            scale=self.b.initializer(f"{source}.w_scale", s),
            zero_point=self.b.initializer(f"{source}.w_zp", z),
            axis=None if per_tensor else axis,
            source=source,
        )
        self.b.annotate(weight.codes, weight.scale, weight.zero_point)
        self.weights.append(weight)
        return self.b.remember(key, weight)

    def _transposed_view(self, stored: OnnxWeight) -> OnnxWeight:
        """The same codes read as ``[in, out]`` through one shared Transpose node.

        The view gets its own copy of the (small) scale and zero-point tensors: ONNX Runtime
        only rewrites ``DequantizeLinear -> MatMul`` into ``MatMulNBits`` when nothing else
        reads them, and the embedding gathers rows of the originals.
        """
        key = ("transpose", stored.codes)
        found = self.b.memo(key)
        if found is None:
            (codes,) = self.b.node("Transpose", [stored.codes],
                                   [self.b.fresh(f"{stored.codes}_T")], base=stored.source,
                                   perm=[1, 0])
            scale = self.b.initializer(f"{stored.scale}_T", self.b.array(stored.scale))
            zero_point = self.b.initializer(f"{stored.zero_point}_T",
                                            self.b.array(stored.zero_point))
            axis = None if stored.axis is None else 1
            found = self.b.remember(key, OnnxWeight(codes, scale, zero_point, axis,
                                                    stored.source))
            self.b.annotate(codes, scale, zero_point)
        return found

    def bias(self, name: str, source: str) -> str:
        """A float bias under the name ``<layer>.bias`` (renamed, not copied twice)."""
        key = ("bias", name)
        found = self.b.memo(key)
        if found is None:
            constant = self.b.constant(name)
            if constant is None:
                return self.b.remember(key, name)
            tensor = onnx.TensorProto()
            tensor.CopyFrom(self.b.initializers[constant])
            tensor.name = self.b.fresh(f"{source}.bias")
            self.b.initializers[tensor.name] = tensor
            found = self.b.remember(key, tensor.name)
        return found
