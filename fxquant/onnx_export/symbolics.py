"""Symbolic functions that turn each fxquant op into one *placeholder* node during tracing.

The TorchScript exporter translates every ordinary torch op of a converted GraphModule; for
fxquant's ops it calls the functions here, which emit a single node in the private domain
``fxquant.onnx`` carrying the op's tensors as inputs and its scalars as attributes. The int8
buffers reach those nodes untouched, as initializers named by their ``state_dict`` keys. The
lowering step (:mod:`.lower`) then replaces each placeholder by standard ``ai.onnx`` nodes, so the
patterns ONNX Runtime fuses are written by fxquant's own code, not by the exporter's folding.

Placeholders (inputs | attributes; ``bias`` is omitted when the op has none):
    linear_dynamic       x, codes, scale, zero_point[, bias] | reduce_range
    linear_static        x, codes, scale, zero_point[, bias] | x_scale, x_zero_point, reduce_range
    linear_weight_only   x, codes, scale, zero_point[, bias]
    embedding            indices, codes, scale, zero_point
    dequantize_weight    codes, scale, zero_point | axis
    fake_quantize_dynamic  x | reduce_range
    quantize_activation    x | scale, zero_point, reduce_range
    dequantize_activation  q | scale, zero_point
    linear_dynamic_per_token      x, codes, scale, zero_point[, bias] | reduce_range
    fake_quantize_dynamic_per_token  x | reduce_range
    linear_weight_only_grouped    x, codes, scale, zero_point[, bias] | group_size
    dequantize_weight_grouped     codes, scale, zero_point | group_size

The fused convolutions are written as the placeholders of their unfused form plus a standard
``Conv`` (and ``Relu``), exactly what an unfused conv exports as:
    conv_dynamic   fake_quantize_dynamic(x), dequantize_weight(codes) -> Conv [+ Relu]
    conv_static    dequantize_activation(quantize_activation(x)), dequantize_weight -> Conv [+ Relu]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

# The TorchScript exporter's helpers (internal to torch; see docs/onnx.md on the coupling).
from torch.onnx._internal.torchscript_exporter import _type_utils
from torch.onnx._internal.torchscript_exporter import symbolic_helper as sh

from ..errors import ExportError

DOMAIN = "fxquant.onnx"
_Value = Any  # torch._C.Value


def _const(value: _Value, kind: str, what: str) -> Any:
    try:
        return sh._get_const(value, kind, what)
    except Exception as exc:  # the exporter raises its own error types here
        raise ExportError(
            f"the {what} of an fxquant op is computed in the graph, not a constant; fxquant's "
            f"export needs it fixed at export time ({exc})."
        ) from None


def _set_type(out: _Value, like: _Value, dtype: torch.dtype, sizes: list[Any] | None) -> _Value:
    """Give the placeholder's output a type so the exporter's symbolic functions downstream
    (which read ranks) keep working; unknown (dynamic) dimensions stay unknown."""
    if sizes is not None:
        out.setType(like.type().with_dtype(dtype).with_sizes(sizes))
    return out


def _linear_type(out: _Value, x: _Value, codes: _Value) -> _Value:
    x_sizes = sh._get_tensor_sizes(x)
    n = sh._get_tensor_sizes(codes)
    sizes = None if x_sizes is None or n is None else [*x_sizes[:-1], n[0]]
    return _set_type(out, x, torch.float32, sizes)


def _tensors(*values: _Value) -> list[_Value]:
    return [v for v in values if not sh._is_none(v)]


def linear_dynamic(g, x, codes, scale, zero_point, bias, reduce_range):
    """Placeholder ``linear_dynamic``."""
    rr = _const(reduce_range, "b", "reduce_range")
    out = g.op(f"{DOMAIN}::linear_dynamic", *_tensors(x, codes, scale, zero_point, bias),
               reduce_range_i=int(rr))
    return _linear_type(out, x, codes)


def linear_static(g, x, x_scale, x_zero_point, reduce_range, codes, scale, zero_point, bias):
    """Placeholder ``linear_static``."""
    out = g.op(
        f"{DOMAIN}::linear_static", *_tensors(x, codes, scale, zero_point, bias),
        x_scale_f=float(_const(x_scale, "f", "activation scale")),
        x_zero_point_i=int(_const(x_zero_point, "i", "activation zero-point")),
        reduce_range_i=int(_const(reduce_range, "b", "reduce_range")),
    )
    return _linear_type(out, x, codes)


def linear_weight_only(g, x, codes, scale, zero_point, bias):
    """Placeholder ``linear_weight_only``."""
    out = g.op(f"{DOMAIN}::linear_weight_only", *_tensors(x, codes, scale, zero_point, bias))
    return _linear_type(out, x, codes)


def embedding(g, indices, codes, scale, zero_point):
    """Placeholder ``embedding``."""
    out = g.op(f"{DOMAIN}::embedding", indices, codes, scale, zero_point)
    idx = sh._get_tensor_sizes(indices)
    table = sh._get_tensor_sizes(codes)
    sizes = None if idx is None or table is None else [*idx, table[1]]
    return _set_type(out, codes, torch.float32, sizes)


def dequantize_weight(g, codes, scale, zero_point, axis):
    """Placeholder ``dequantize_weight``."""
    out = g.op(f"{DOMAIN}::dequantize_weight", codes, scale, zero_point,
               axis_i=int(_const(axis, "i", "axis")))
    return _set_type(out, codes, torch.float32, sh._get_tensor_sizes(codes))


def fake_quantize_dynamic(g, x, reduce_range):
    """Placeholder ``fake_quantize_dynamic``."""
    out = g.op(f"{DOMAIN}::fake_quantize_dynamic", x,
               reduce_range_i=int(_const(reduce_range, "b", "reduce_range")))
    return _set_type(out, x, torch.float32, sh._get_tensor_sizes(x))


def quantize_activation(g, x, scale, zero_point, reduce_range):
    """Placeholder ``quantize_activation``."""
    out = g.op(
        f"{DOMAIN}::quantize_activation", x,
        scale_f=float(_const(scale, "f", "activation scale")),
        zero_point_i=int(_const(zero_point, "i", "activation zero-point")),
        reduce_range_i=int(_const(reduce_range, "b", "reduce_range")),
    )
    return _set_type(out, x, torch.uint8, sh._get_tensor_sizes(x))


def dequantize_activation(g, q, scale, zero_point):
    """Placeholder ``dequantize_activation``."""
    out = g.op(
        f"{DOMAIN}::dequantize_activation", q,
        scale_f=float(_const(scale, "f", "activation scale")),
        zero_point_i=int(_const(zero_point, "i", "activation zero-point")),
    )
    return _set_type(out, q, torch.float32, sh._get_tensor_sizes(q))


def _conv(g, x, w, codes, bias, stride, padding, dilation, groups, relu):
    pads = _const(padding, "is", "conv padding")
    kernel = sh._get_tensor_sizes(codes)
    shape = {} if kernel is None or None in kernel else {"kernel_shape_i": kernel[2:]}
    y = g.op("Conv", *_tensors(x, w, bias), strides_i=_const(stride, "is", "conv stride"),
             pads_i=pads + pads, dilations_i=_const(dilation, "is", "conv dilation"),
             group_i=_const(groups, "i", "conv groups"), **shape)
    return g.op("Relu", y) if _const(relu, "b", "relu") else y


def conv_dynamic(g, x, codes, scale, zero_point, bias, reduce_range, stride, padding, dilation,
                 groups, relu):
    """``conv_dynamic`` as its unfused placeholders plus Conv [+ Relu]."""
    xq = fake_quantize_dynamic(g, x, reduce_range)
    w = dequantize_weight(g, codes, scale, zero_point, 0)
    return _conv(g, xq, w, codes, bias, stride, padding, dilation, groups, relu)


def conv_static(g, x, x_scale, x_zero_point, reduce_range, codes, scale, zero_point, bias, stride,
                padding, dilation, groups, relu):
    """``conv_static`` as its unfused placeholders plus Conv [+ Relu]."""
    q = quantize_activation(g, x, x_scale, x_zero_point, reduce_range)
    xq = dequantize_activation(g, q, x_scale, x_zero_point)
    w = dequantize_weight(g, codes, scale, zero_point, 0)
    return _conv(g, xq, w, codes, bias, stride, padding, dilation, groups, relu)


def linear_dynamic_per_token(g, x, codes, scale, zero_point, bias, reduce_range):
    """Placeholder ``linear_dynamic_per_token``."""
    rr = _const(reduce_range, "b", "reduce_range")
    out = g.op(f"{DOMAIN}::linear_dynamic_per_token",
               *_tensors(x, codes, scale, zero_point, bias), reduce_range_i=int(rr))
    return _linear_type(out, x, codes)


def fake_quantize_dynamic_per_token(g, x, reduce_range):
    """Placeholder ``fake_quantize_dynamic_per_token``."""
    out = g.op(f"{DOMAIN}::fake_quantize_dynamic_per_token", x,
               reduce_range_i=int(_const(reduce_range, "b", "reduce_range")))
    return _set_type(out, x, torch.float32, sh._get_tensor_sizes(x))


def linear_weight_only_grouped(g, x, codes, scale, zero_point, bias, group_size):
    """Placeholder ``linear_weight_only_grouped``."""
    out = g.op(f"{DOMAIN}::linear_weight_only_grouped",
               *_tensors(x, codes, scale, zero_point, bias),
               group_size_i=int(_const(group_size, "i", "group size")))
    x_sizes = sh._get_tensor_sizes(x)
    n = sh._get_tensor_sizes(scale)
    sizes = None if x_sizes is None or n is None else [*x_sizes[:-1], n[0]]
    return _set_type(out, x, torch.float32, sizes)


def dequantize_weight_grouped(g, codes, scale, zero_point, group_size):
    """Placeholder ``dequantize_weight_grouped``."""
    size = int(_const(group_size, "i", "group size"))
    out = g.op(f"{DOMAIN}::dequantize_weight_grouped", codes, scale, zero_point,
               group_size_i=size)
    n = sh._get_tensor_sizes(scale)
    sizes = None if n is None or None in n else [n[0], n[1] * size]
    return _set_type(out, scale, torch.float32, sizes)


def aten_diff(g, self, n, dim, prepend, append):
    """``torch.diff`` (first order), which the TorchScript exporter lacks and Hugging Face
    GPT-2's position handling uses: ``x[1:] - x[:-1]`` along ``dim`` after the concatenations."""
    if _const(n, "i", "order of torch.diff") != 1:
        raise ExportError("torch.diff with n != 1 is not supported by fxquant's export.")
    axis = _const(dim, "i", "dim of torch.diff")
    parts = [v for v in (prepend, self, append) if not sh._is_none(v)]
    x = g.op("Concat", *parts, axis_i=axis) if len(parts) > 1 else self
    axes = g.op("Constant", value_t=torch.tensor([axis]))
    one = g.op("Constant", value_t=torch.tensor([1]))
    zero = g.op("Constant", value_t=torch.tensor([0]))
    minus_one = g.op("Constant", value_t=torch.tensor([-1]))
    end = g.op("Constant", value_t=torch.tensor([2**62]))
    return g.op("Sub", g.op("Slice", x, one, end, axes), g.op("Slice", x, zero, minus_one, axes))


def aten_cumsum(g, self, dim, dtype):
    """``torch.cumsum`` with the integer promotion of boolean inputs that the exporter's own
    symbolic omits (it writes ``CumSum`` on bool, which ONNX does not define)."""
    axis = g.op("Constant", value_t=torch.tensor(_const(dim, "i", "dim of torch.cumsum")))
    if not sh._is_none(dtype):
        to = _type_utils.JitScalarType(_const(dtype, "i", "dtype of torch.cumsum")).onnx_type()
        self = g.op("Cast", self, to_i=to)
    elif _type_utils.JitScalarType.from_value(self, _type_utils.JitScalarType.UNDEFINED) in (
        _type_utils.JitScalarType.BOOL,
        _type_utils.JitScalarType.UINT8,
        _type_utils.JitScalarType.INT8,
        _type_utils.JitScalarType.INT16,
    ):
        self = g.op("Cast", self, to_i=_type_utils.JitScalarType.INT64.onnx_type())
    return g.op("CumSum", self, axis)


SYMBOLICS: dict[str, Callable[..., _Value]] = {
    "aten::diff": aten_diff,
    "aten::cumsum": aten_cumsum,
    "fxquant::linear_dynamic": linear_dynamic,
    "fxquant::linear_static": linear_static,
    "fxquant::linear_weight_only": linear_weight_only,
    "fxquant::embedding": embedding,
    "fxquant::dequantize_weight": dequantize_weight,
    "fxquant::fake_quantize_dynamic": fake_quantize_dynamic,
    "fxquant::quantize_activation": quantize_activation,
    "fxquant::dequantize_activation": dequantize_activation,
    "fxquant::linear_dynamic_per_token": linear_dynamic_per_token,
    "fxquant::fake_quantize_dynamic_per_token": fake_quantize_dynamic_per_token,
    "fxquant::linear_weight_only_grouped": linear_weight_only_grouped,
    "fxquant::dequantize_weight_grouped": dequantize_weight_grouped,
    "fxquant::conv_dynamic": conv_dynamic,
    "fxquant::conv_static": conv_static,
}


@contextlib.contextmanager
def registered(opset: int) -> Iterator[None]:
    """The placeholder symbolics, registered for ``opset`` only while the block runs."""
    for name, fn in SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, fn, opset)
    try:
        yield
    finally:
        for name in SYMBOLICS:
            torch.onnx.unregister_custom_op_symbolic(name, opset)
