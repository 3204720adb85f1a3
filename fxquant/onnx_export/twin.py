"""The function an exported file computes, as a GraphModule: the export's parity reference.

The file computes what the GraphModule computes except in two respects, and the twin copies both:

* activation codes are never clamped to 7 bits: ``DynamicQuantizeLinear`` is 8-bit, and static
  layers keep the model's scale and zero-point but saturate at 255 (see :mod:`.activation`); the
  twin switches ``reduce_range`` off in every fxquant op;
* a static layer's bias is int32 at scale ``x_scale * w_scale`` (see :mod:`.bias`); the twin's
  biases are rounded the same way.

Run under ``fxquant.ops.reference_kernels()`` the twin computes in float the integer arithmetic the
file describes, so ONNX Runtime's output can be held to a tight bound against it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.fx as fx
from torch import nn

from .. import ops
from ..graph import CONV_FNS, fetch_attr
from ..kernels import reference as kernels
from .bias import rounded_bias

# fxquant op -> index of its reduce_range argument
_REDUCE_RANGE_ARG: dict[fx.node.Target, int] = {
    ops.linear_dynamic: 5,
    ops.fake_quantize_dynamic: 1,
    ops.linear_static: 3,
    ops.quantize_activation: 3,
    ops.linear_dynamic_per_token: 5,
    ops.fake_quantize_dynamic_per_token: 1,
    ops.conv_dynamic: 5,
    ops.conv_static: 3,
}


def _full_range(node: fx.Node) -> None:
    index = _REDUCE_RANGE_ARG.get(node.target)
    if index is not None:
        args = list(node.args)
        args[index] = False
        node.args = tuple(args)


def _static_bias(node: fx.Node) -> tuple[str, float, str] | None:
    """(bias attribute, activation scale, weight-scale attribute) of a static linear or conv."""
    if node.target in (ops.linear_static, ops.conv_static):  # the same argument positions
        bias, x_scale, w_scale = node.args[7], node.args[1], node.args[5]
    elif node.target in CONV_FNS and len(node.args) > 2:
        x, w, bias = node.args[:3]
        if not (
            isinstance(x, fx.Node)
            and x.target is ops.dequantize_activation
            and isinstance(w, fx.Node)
            and w.target is ops.dequantize_weight
        ):
            return None
        x_scale, w_scale = x.args[1], w.args[1]
    else:
        return None
    if not (
        isinstance(bias, fx.Node)
        and bias.op == "get_attr"
        and isinstance(bias.target, str)
        and isinstance(x_scale, (int, float))  # the ops' schema: ``float x_scale``
        and isinstance(w_scale, fx.Node)
        and w_scale.op == "get_attr"
        and isinstance(w_scale.target, str)
    ):
        return None
    return bias.target, float(x_scale), w_scale.target


def _round_bias(twin: fx.GraphModule, node: fx.Node) -> None:
    found = _static_bias(node)
    if found is None:
        return
    bias, x_scale, w_scale = found
    tensor = fetch_attr(twin, bias)
    value = rounded_bias(tensor.detach().numpy(), x_scale, fetch_attr(twin, w_scale).numpy())
    with torch.no_grad():
        tensor.copy_(torch.from_numpy(value))


def export_reference(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` that computes what its exported file computes."""
    twin = copy.deepcopy(gm)
    for node in twin.graph.nodes:
        if node.op == "call_function":
            _full_range(node)
            _round_bias(twin, node)
    twin.recompile()
    return twin


# --- the same model with float activations: what quantizing the activations costs ---------------


def _linear_dynamic_float(x, codes, scale, zero_point, bias, reduce_range):
    return kernels.linear_weight_only(x, codes, scale, zero_point, bias)


def _linear_static_float(x, x_scale, x_zero_point, reduce_range, codes, scale, zero_point, bias):
    return kernels.linear_weight_only(x, codes, scale, zero_point, bias)


def _conv_float(x, codes, scale, zero_point, bias, stride, padding, dilation, groups, relu):
    y = kernels.conv_int8_weight(x, codes, scale, zero_point, bias, stride, padding, dilation,
                                 groups)
    return torch.relu(y) if relu else y


def _conv_dynamic_float(x, codes, scale, zero_point, bias, reduce_range, *conv):
    return _conv_float(x, codes, scale, zero_point, bias, *conv)


def _conv_static_float(x, x_scale, x_zero_point, reduce_range, codes, scale, zero_point, bias,
                       *conv):
    return _conv_float(x, codes, scale, zero_point, bias, *conv)


def _first(x, *_args):
    return x


# fxquant op name -> the same computation with the activation left in float (weights int8).
_FLOAT_ACTIVATIONS = {
    "linear_dynamic": _linear_dynamic_float,
    "linear_dynamic_per_token": _linear_dynamic_float,
    "linear_static": _linear_static_float,
    "conv_dynamic": _conv_dynamic_float,
    "conv_static": _conv_static_float,
    "fake_quantize_dynamic": _first,
    "fake_quantize_dynamic_per_token": _first,
    "quantize_activation": _first,
    "dequantize_activation": _first,
}


def float_activation_reference(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` with every activation quantizer removed (weights stay int8 codes).

    It differs from the export twin by exactly the activation rounding, so ``twin - float`` is
    the size of that rounding on real inputs: the unit validation measures the file's error in.
    """
    floats = copy.deepcopy(gm)
    table = {getattr(ops, name): fn for name, fn in _FLOAT_ACTIVATIONS.items()
             if hasattr(ops, name)}
    for node in floats.graph.nodes:
        if node.op == "call_function" and node.target in table:
            node.target = table[node.target]
    floats.recompile()
    return floats


# --- the same, for a model holding converted GraphModules (regions) ---------------------------


def _replace_converted(
    model: nn.Module, converted: tuple[tuple[str, fx.GraphModule], ...],
    transform: Callable[[fx.GraphModule], nn.Module],
) -> nn.Module:
    if len(converted) == 1 and converted[0][0] == "":
        return transform(converted[0][1])
    out = copy.deepcopy(model)
    for name, gm in converted:
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, child, transform(gm))
    return out


def twin_of(model: nn.Module, converted: tuple[tuple[str, fx.GraphModule], ...]) -> nn.Module:
    """The export twin of ``model``: each converted GraphModule inside replaced by its twin."""
    return _replace_converted(model, converted, export_reference)


def float_twin_of(model: nn.Module, converted: tuple[tuple[str, fx.GraphModule], ...]
                  ) -> nn.Module:
    """The twin with float activations: each converted GraphModule's activation quantizers
    removed (the unit of :func:`.validate.validate_cases`)."""
    return _replace_converted(
        model, converted, lambda gm: float_activation_reference(export_reference(gm)))
