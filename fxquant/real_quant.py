"""Real quantization as modules: the seed document's ``RealQuantize``, ``RealQuantizeLinear`` and
``convert_to_real_quant``, built on fxquant's numerics and fused int8 ops. The layers live in
:mod:`fxquant.real_quant_layers` (importable from here too); this module converts whole models:
float or fake-quant to int8 (:func:`convert_to_real_quant`), back to float
(:func:`to_float_model`), and the ``QuantConfig`` that reproduces an int8 model
(:func:`quant_config_of`).

    qmodel = convert_to_real_quant(model, bits=8)    # a copy; every nn.Linear -> RealQuantizeLinear
    for module in qmodel.modules():                  # the document's loop: finds every layer and
        if isinstance(module, RealQuantizeLinear):   # is a no-op, the copy is already int8
            module.quantize_weights()

How this differs from the seed document, and why:

* ``convert_to_real_quant`` quantizes the weights of the copy at once. The document converted
  first and quantized later, in place, through ``PTQPipeline``; but no function here changes the
  model it is given, so the copy it returns must already be the deployable model. The weights are
  preserved to within half a quantization step (tested); the float copy is not kept, which is
  what makes the model 4x smaller. ``quantize_weights()`` on a quantized layer does nothing.
* The forward pass is one call to fxquant's fused int8 op (``torch.ops.fxquant.linear_dynamic``,
  fbgemm's int8 GEMM on x86), never "dequantize the weight, then a float matmul", which is what
  made the document's int8 model 5.5x slower than fp32. ``mode="weight_only"`` keeps the
  activations in float (the document's "int8 weights x float activations").
* There is no second copy of the quantization math: scales, zero-points, rounding and clamping
  all come from :mod:`fxquant.numerics`.

A quantized ``RealQuantizeLinear`` reports ``_fxquant_quantized = True``, so ``fxquant.quantize``
refuses to quantize it a second time; :func:`to_float_model` gives the float equivalent (weights
equal to the dequantized int8 codes) that ``fxquant.quantize`` with :func:`quant_config_of`
maps back to the same codes -- how ``PTQPipeline`` and ``ONNXExporter`` take such a model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeGuard

import torch
from torch import nn

from .capture import is_quantized
from .config import QuantConfig
from .errors import AlreadyQuantizedError, ConfigError
from .fake_quant import (
    FakeQuantizeConv1D,
    FakeQuantizeConv1d,
    FakeQuantizeConv2d,
    FakeQuantizeEmbedding,
    FakeQuantizeLinear,
    is_conv1d,
    transformers_conv1d,
)
from .real_quant_layers import (
    LinearMode,
    RealQuantize,
    RealQuantizeConv,
    RealQuantizeEmbedding,
    RealQuantizeLinear,
)

__all__ = [
    "LinearMode",
    "RealQuantize",
    "RealQuantizeConv",
    "RealQuantizeEmbedding",
    "RealQuantizeLinear",
    "convert_to_real_quant",
    "quant_config_of",
    "real_quant_layers",
    "to_float_model",
]


_CONVS = (nn.Conv1d, nn.Conv2d, FakeQuantizeConv1d, FakeQuantizeConv2d)


def _as_linear(module: nn.Module) -> nn.Linear | None:
    """The ``nn.Linear`` a layer computes: itself for exact ``nn.Linear`` (and fake-quant
    layers), ``W.t()`` for GPT-2's ``Conv1D``; None for anything else. Subclasses such as
    MultiheadAttention's out_proj are read by their owner's own code: they stay."""
    if type(module) is nn.Linear or isinstance(module, FakeQuantizeLinear):
        return module
    if is_conv1d(module) or isinstance(module, FakeQuantizeConv1D):
        linear = nn.Linear(module.nx, module.nf, bias=module.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(module.weight.t())
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        return linear.train(module.training)
    return None


def _is_conv(module: nn.Module) -> TypeGuard[nn.Conv1d | nn.Conv2d]:
    return (type(module) in _CONVS and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def _is_table(module: nn.Module) -> TypeGuard[nn.Embedding]:
    return type(module) in (nn.Embedding, FakeQuantizeEmbedding) and module.max_norm is None


def _convertible(module: nn.Module) -> bool:
    return _as_linear(module) is not None or _is_conv(module) or _is_table(module)


def _replace_modules(
    model: nn.Module, wanted: Callable[[nn.Module], bool], make: Callable[[nn.Module], nn.Module]
) -> nn.Module:
    """Replace (in ``model``, in place) every submodule for which ``wanted`` holds, the model
    itself too; returns the (possibly new) root."""
    if wanted(model):
        return make(model)
    for name, child in list(model.named_children()):
        setattr(model, name, _replace_modules(child, wanted, make))
    return model


def convert_to_real_quant(
    model: nn.Module,
    bits: int = 8,
    *,
    symmetric: bool = True,
    per_channel: bool = True,
    mode: LinearMode = "dynamic",
    reduce_range: bool | None = None,
    embedding_bits: int = 8,
) -> nn.Module:
    """A copy of ``model`` in which every layer fxquant's canonical forms cover is int8: each
    ``nn.Linear`` and GPT-2 ``Conv1D`` a quantized :class:`RealQuantizeLinear` (``Conv1D``'s
    weight ``[in, out]`` becomes the linear weight ``W.t()``), each ``nn.Conv1d`` / ``nn.Conv2d``
    (zero padding) a :class:`RealQuantizeConv`, each ``nn.Embedding`` a
    :class:`RealQuantizeEmbedding` of ``embedding_bits`` -- their fake-quant twins too. A table
    tied to a linear (GPT-2's ``wte`` / ``lm_head``) is stored once per layer. The copy is in eval
    mode; ``model`` is unchanged.

    Raises AlreadyQuantizedError for a model fxquant already quantized.
    """
    if is_quantized(model):
        raise AlreadyQuantizedError(
            f"{type(model).__name__} already holds int8 layers; convert the float model."
        )

    options: dict[str, Any] = dict(symmetric=symmetric, per_channel=per_channel, mode=mode,
                                   reduce_range=reduce_range)

    def make(module: nn.Module) -> nn.Module:
        linear = _as_linear(module)
        if linear is not None:
            return RealQuantizeLinear.from_float(linear, bits, **options)
        if _is_conv(module):
            return RealQuantizeConv(module, bits, **options)
        if _is_table(module):
            return RealQuantizeEmbedding(module, embedding_bits, symmetric=symmetric)
        raise TypeError(f"{type(module).__name__} has no int8 form")  # not _convertible

    return _replace_modules(copy.deepcopy(model), _convertible, make).eval()


def _float_layer(module: nn.Module) -> nn.Module:
    if isinstance(module, (RealQuantizeLinear, RealQuantizeEmbedding, RealQuantizeConv)):
        return module.to_float()
    if isinstance(module, FakeQuantizeConv1D):
        conv_type = transformers_conv1d()
        if conv_type is None:  # cannot happen: a model holding a FakeQuantizeConv1D loaded it
            raise TypeError("transformers' Conv1D is not loaded")
        conv = conv_type(module.nf, module.nx)
        conv.load_state_dict(module.state_dict())
        return conv.train(module.training)
    for float_type in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding):
        if isinstance(module, float_type):  # a fake-quant twin: the same layer without rounding
            module.__class__ = float_type
            del module._scheme
            return module
    raise TypeError(f"no float form for {type(module).__name__}")


_QUANT_LAYERS = (RealQuantizeLinear, RealQuantizeEmbedding, RealQuantizeConv, FakeQuantizeLinear,
                 FakeQuantizeConv1D, FakeQuantizeConv1d, FakeQuantizeConv2d, FakeQuantizeEmbedding)


def to_float_model(model: nn.Module) -> nn.Module:
    """A float copy of ``model``: every int8 and fake-quant layer of the seed toolkit becomes its
    float layer (``nn.Linear``, ``Conv1D``, ``nn.Conv1d`` / ``nn.Conv2d``, ``nn.Embedding``; an
    int8 layer with its dequantized weight). ``model`` is unchanged.

    ``fxquant.quantize`` with the layer's scheme maps such a weight back to the same int8 codes,
    so this is how the PTQ pipeline and the ONNX exporter hand a converted model to fxquant.
    """
    return _replace_modules(
        copy.deepcopy(model),
        lambda m: isinstance(m, _QUANT_LAYERS),
        _float_layer,
    )


def real_quant_layers(model: nn.Module) -> list[RealQuantizeLinear]:
    """The quantized RealQuantizeLinear layers of ``model``."""
    return [m for m in model.modules() if isinstance(m, RealQuantizeLinear) and m.is_quantized]


_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
_FAKE_MATMULS = (FakeQuantizeLinear, FakeQuantizeConv1D, FakeQuantizeConv1d, FakeQuantizeConv2d)


def _layer_scheme(module: nn.Module) -> tuple[Any, ...] | None:
    """(bits, symmetric, per_channel, mode, reduce_range) of a quantized seed-toolkit matmul or
    conv layer."""
    if isinstance(module, (RealQuantizeLinear, RealQuantizeConv)) and module.is_quantized:
        mode = module.mode
    elif isinstance(module, _FAKE_MATMULS):
        mode = "dynamic" if module.quantize_activations else "weight_only"
    else:
        return None
    return (module.bits, module.symmetric, module.per_channel, mode, module.reduce_range)


def _table_bits(model: nn.Module) -> dict[str, int]:
    return {name: m.bits for name, m in model.named_modules()
            if isinstance(m, (RealQuantizeEmbedding, FakeQuantizeEmbedding))}


def quant_config_of(model: nn.Module) -> QuantConfig | None:
    """The QuantConfig that maps ``to_float_model(model)`` back onto ``model``'s int8 layers
    (every other weighted layer skipped), or None when it has no such layer."""
    schemes = {name: s for name, m in model.named_modules() if (s := _layer_scheme(m)) is not None}
    tables = _table_bits(model)
    if not schemes:
        return None
    if len(set(schemes.values())) > 1 or len(set(tables.values())) > 1:
        raise ConfigError(
            "the model's quantized layers use different schemes (bits, symmetry, granularity, "
            f"mode, reduce_range): {sorted(set(schemes.values()))}, embedding bits "
            f"{sorted(set(tables.values()))}; one model has one scheme."
        )
    bits, symmetric, per_channel, mode, reduce_range = next(iter(schemes.values()))
    kept = set(schemes) | set(tables)
    skip = tuple(
        name
        for name, m in model.named_modules()
        if name and name not in kept and isinstance(m, (*_WEIGHTED, RealQuantizeLinear))
    )
    return QuantConfig(
        mode=mode,
        weight_bits=bits,
        weight_symmetric=symmetric,
        weight_granularity="per_channel" if per_channel else "per_tensor",
        reduce_range=reduce_range,
        pair_safe_weights=False,  # seed layers use plain min-max scales
        embedding_bits=next(iter(tables.values()), 8),
        skip=skip,
    )
