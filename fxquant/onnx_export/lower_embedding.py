"""Lower the int8 embedding placeholder: gather int8 rows, then dequantize only those rows.

Per-row scales (the default)::

    flat = Reshape(indices, [-1])
    rows = Gather(table int8 [V, D], flat)                     int8 [M, D]
    DequantizeLinear(rows, Gather(scale, flat), Gather(zp, flat), axis=0)   float [M, D]
    Reshape(., concat(Shape(indices), [D]))

The scales of the gathered rows are an input computed in the graph, which ``DequantizeLinear``
allows; the table stays int8 in memory, and only ``M`` rows are ever converted to float (the same
work as the GraphModule's ``fxquant.embedding``). A per-tensor table is ``Gather`` + one
``DequantizeLinear`` with scalar parameters, exactly what ONNX Runtime's quantizer writes.
"""

from __future__ import annotations

import numpy as np
import onnx

from .activation import dequantize
from .context import LoweringContext


def lower_embedding(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """``embedding`` -> Gather of int8 rows, then DequantizeLinear of those rows only."""
    b, weights = ctx.b, ctx.weights
    indices, codes, scale, zp = node.input[:4]
    out = node.output[0]
    w = weights.get(codes, scale, zp, "stored", axis=0)
    src = w.source
    if w.axis is None:
        (rows,) = b.node("Gather", [w.codes, indices], base=src)
        dequantize(b, rows, w.scale, w.zero_point, src, out=out)
        return
    minus_one = b.initializer(f"{src}.flat_shape", np.array([-1], dtype=np.int64))
    (flat,) = b.node("Reshape", [indices, minus_one], base=src)
    (rows,) = b.node("Gather", [w.codes, flat], base=src)
    (row_scale,) = b.node("Gather", [w.scale, flat], base=src)
    (row_zp,) = b.node("Gather", [w.zero_point, flat], base=src)
    values = dequantize(b, rows, row_scale, row_zp, src, axis=0)
    (idx_shape,) = b.node("Shape", [indices], base=src)
    width = b.initializer(f"{src}.row_width", np.array([b.initializers[w.codes].dims[1]],
                                                        dtype=np.int64))
    (shape,) = b.node("Concat", [idx_shape, width], base=src, axis=0)
    b.node("Reshape", [values, shape], [out], base=src)
