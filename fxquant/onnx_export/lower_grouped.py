"""Lower group-wise weight-only linears (and stand-alone group-wise dequantizations).

Standard form (default; opset 13+, ``ai.onnx`` only): the codes are an int8 initializer already
laid out ``[K / group_size, group_size, N]`` (the transposed, ``MatMul`` layout, cut into groups),
with per-group scales (and zero-points) ``[K / group_size, 1, N]``, and the weight is rebuilt in
the graph::

    W = Reshape(Mul(Sub(Cast(codes), Cast(zero_point)), scale), [K, N])    # no Sub: symmetric
    y = MatMul(x, W) -> Add(bias)

Codes are stored signed: the model's unsigned codes minus their common zero-point when all groups
share one (symmetric weights: zero-point 0, no ``Sub``), else minus 8 (4 bits or fewer) or 128,
zero-points likewise -- the same values. The file holds one byte per weight; ONNX Runtime folds
the dequantization once at load and runs a float ``MatMul``.

``MatMulNBits`` (opt-in, ``export_onnx(..., matmul_nbits=True)``; ONNX Runtime's ``com.microsoft``
domain): the packed 4-bit codes go in as they are stored (two per byte, even column in the low
nibble), ``[N, K / group_size, group_size / 2]``, with scales ``[N * K / group_size]`` and, unless
every zero-point is 8 (symmetric), the zero-points packed two per byte. ONNX Runtime computes with
the 4-bit weights directly. It needs codes of at most 4 bits and a group size that is a power of
two >= 16; other layers keep the standard form. Which form each layer got is counted in the
file's metadata (``fxquant.grouped_weights``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .activation import FLOAT
from .context import LoweringContext

MS_DOMAIN = "com.microsoft"
STANDARD = "standard"
MATMUL_NBITS = "MatMulNBits"


@dataclass(frozen=True)
class _Grouped:
    codes: np.ndarray  # uint8 [N, K], unpacked
    stored: np.ndarray  # uint8 as the model stores it: [N, K / 2] when packed
    scale: np.ndarray  # float32 [N, G]
    zero_point: np.ndarray  # uint8 [N, G]
    group_size: int
    source: str

    @property
    def packed(self) -> bool:
        return self.stored.shape[1] * 2 == self.codes.shape[1]

    @property
    def offset(self) -> int:
        """What the int8 codes in the file are shifted by: the zero-point when every group
        shares it (symmetric weights: then no Sub) and the shift fits int8, else the middle of
        the unsigned range."""
        common = int(self.zero_point.flat[0])
        q = self.codes.astype(np.int16) - common
        if (self.zero_point == common).all() and q.min() >= -128 and q.max() <= 127:
            return common
        return 8 if self.packed else 128


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _read(ctx: LoweringContext, names: list[str], group_size: int) -> _Grouped:
    b = ctx.b
    stored, scale, zp = (b.array(n) for n in names)
    columns = scale.shape[1] * group_size
    codes = stored
    if stored.shape[1] * 2 == columns:  # two codes per byte, the even column in the low nibble
        codes = np.stack((stored & 0x0F, stored >> 4), axis=-1).reshape(stored.shape[0], -1)
    return _Grouped(codes, stored, scale.astype(np.float32), zp, group_size,
                    ctx.weights.source(names[0]))


def _standard_weight(ctx: LoweringContext, w: _Grouped, transposed: bool, out: str | None) -> str:
    """The float weight rebuilt from int8 codes: ``[K, N]`` (transposed) or ``[N, K]``."""
    b, g = ctx.b, w.group_size
    n, k = w.codes.shape
    shift = w.offset
    q = (w.codes.astype(np.int16) - shift).astype(np.int8)
    z = (w.zero_point.astype(np.int16) - shift).astype(np.int8)
    if transposed:
        q, s, z, shape = (q.T.reshape(k // g, g, n), w.scale.T[:, None, :], z.T[:, None, :],
                          [k, n])
    else:
        q, s, z, shape = (q.reshape(n, k // g, g), w.scale[:, :, None], z[:, :, None], [n, k])
    codes = b.initializer(f"{w.source}.w_int8", q)
    scale = b.initializer(f"{w.source}.w_scale", np.ascontiguousarray(s))
    zero_point = b.initializer(f"{w.source}.w_zp", np.ascontiguousarray(z))
    b.annotate(codes, scale, zero_point)
    (value,) = b.node("Cast", [codes], base=w.source, to=FLOAT)
    if z.any():
        (zf,) = b.node("Cast", [zero_point], base=w.source, to=FLOAT)
        (value,) = b.node("Sub", [value, zf], base=w.source)
    (value,) = b.node("Mul", [value, scale], base=w.source)
    dims = b.initializer(f"{w.source}.w_shape", np.array(shape, dtype=np.int64))
    (weight,) = b.node("Reshape", [value, dims], [out or b.fresh(f"{w.source}.weight")],
                       base=w.source)
    return weight


def _nbits_eligible(w: _Grouped) -> bool:
    g = w.group_size
    return w.packed and g >= 16 and (g & (g - 1)) == 0


def _matmul_nbits(ctx: LoweringContext, w: _Grouped, x: str, out: str) -> None:
    b, g = ctx.b, w.group_size
    n, k = w.codes.shape
    blocks = k // g
    inputs = [
        x,
        b.initializer(f"{w.source}.w_int4", w.stored.reshape(n, blocks, g // 2)),
        b.initializer(f"{w.source}.w_scale", w.scale.reshape(-1)),
    ]
    if (w.zero_point != 8).any():
        zp = w.zero_point
        if blocks % 2:
            zp = np.pad(zp, ((0, 0), (0, 1)), constant_values=8)
        packed_zp = (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8)
        inputs.append(b.initializer(f"{w.source}.w_zp", packed_zp.reshape(-1)))
    b.node(MATMUL_NBITS, inputs, [out], base=w.source, domain=MS_DOMAIN, K=k, N=n, bits=4,
           block_size=g)


def _count(ctx: LoweringContext, form: str) -> None:
    counts = ctx.b.memo("grouped_forms") or ctx.b.remember("grouped_forms", {})
    counts[form] = counts.get(form, 0) + 1


def lower_linear_weight_only_grouped(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """``linear_weight_only_grouped`` -> MatMulNBits if asked and eligible, else MatMul."""
    b = ctx.b
    group_size = int(_attrs(node)["group_size"])
    w = _read(ctx, list(node.input[1:4]), group_size)
    bias = node.input[4] if len(node.input) > 4 and node.input[4] else None
    out = node.output[0] if bias is None else b.fresh(f"{w.source}/matmul_output")
    if ctx.scheme.matmul_nbits and _nbits_eligible(w):
        _matmul_nbits(ctx, w, node.input[0], out)
        _count(ctx, MATMUL_NBITS)
    else:
        key = ("grouped_weight", node.input[1])
        weight = b.memo(key) or b.remember(key, _standard_weight(ctx, w, True, None))
        b.node("MatMul", [node.input[0], weight], [out], base=w.source)
        _count(ctx, STANDARD)
    if bias is not None:
        b.node("Add", [out, ctx.weights.bias(bias, w.source)], [node.output[0]], base=w.source)


def lower_dequantize_weight_grouped(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """``dequantize_weight_grouped`` -> the float weight, rebuilt in the standard form."""
    group_size = int(_attrs(node)["group_size"])
    w = _read(ctx, list(node.input[:3]), group_size)
    _standard_weight(ctx, w, False, node.output[0])
    _count(ctx, STANDARD)
