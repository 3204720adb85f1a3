"""Fake quantization for quantization-aware training: the seed document's ``FakeQuantizeLinear``
and ``apply_fake_quant_to_model``, a thin layer over :mod:`fxquant.fake_quantizers`.

    fq_model = apply_fake_quant_to_model(model, bits=8)   # a copy; model is unchanged
    loss = criterion(fq_model(x), y); loss.backward(); optimizer.step()   # ordinary PyTorch

A ``FakeQuantizeLinear`` is an ``nn.Linear`` whose forward pass rounds, in float, exactly what
fxquant's dynamic int8 model rounds: the weight to int8 codes (symmetric, per output channel, as
``numerics.quantize_weight``) and the input to 7- or 8-bit codes from the batch's own range (as
the ``fake_quantize_dynamic`` reference kernel). Gradients pass through the rounding unchanged
(straight-through estimator), so the network learns weights that survive int8. The arithmetic is
``fake_quantizers.fake_quantize_weight`` / ``fake_quantize_dynamic``: the functions the compiler's
own QAT (``fxquant.prepare_qat``) uses.

Every layer kind fxquant's canonical forms cover gets its fake-quant twin, with the original's
state_dict keys (trained weights load back into the float model): ``nn.Linear``, GPT-2's
``Conv1D`` (weight stored ``[in, out]``; rounded per output feature, i.e. per row of ``W.t()``),
``nn.Conv1d`` / ``nn.Conv2d`` (zero padding) and ``nn.Embedding`` (per-row tables of
``embedding_bits``, no activation to quantize). ``convert_to_real_quant`` turns them into int8
layers.
"""

from __future__ import annotations

import copy
import sys
from typing import TYPE_CHECKING, Any, Generic, TypeGuard, TypeVar, cast, overload

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .fake_quantizers import fake_quantize_dynamic, fake_quantize_weight
from .reduce_range import kernel_safe_reduce_range
from .straight_through import straight_through

if TYPE_CHECKING:

    class Conv1D(nn.Module):
        """What fxquant reads of GPT-2's ``transformers.pytorch_utils.Conv1D`` (transformers is
        optional, so the type checker gets this outline instead)."""

        nf: int
        nx: int
        weight: nn.Parameter
        bias: nn.Parameter | None


def transformers_conv1d() -> type | None:
    """GPT-2's ``transformers.pytorch_utils.Conv1D`` when transformers is loaded (a model that
    holds one has loaded it), else None."""
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def is_conv1d(module: nn.Module) -> TypeGuard[Conv1D]:
    """Whether ``module`` is exactly GPT-2's ``Conv1D`` (``y = x @ W + b``, W ``[in, out]``)."""
    cls = transformers_conv1d()
    return cls is not None and type(module) is cls


def _check_bits(bits: Any) -> None:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ConfigError(f"bits={bits!r}: fake int8 quantization takes 2 to 8 bits.")


class _FakeQuantScheme:
    """What a fake-quant layer rounds, and its rounded weight cached until the weight changes
    (the version counter moves on every optimizer step and load_state_dict), so inference does
    not re-round 400k weights a call."""

    def __init__(self, bits: int, symmetric: bool, per_channel: bool,
                 quantize_activations: bool, reduce_range: bool | None) -> None:
        _check_bits(bits)
        self.bits, self.symmetric, self.per_channel = bits, symmetric, per_channel
        self.quantize_activations = quantize_activations
        if reduce_range is None:
            reduce_range = kernel_safe_reduce_range(
                bits, "dynamic" if quantize_activations else "weight_only")
        self.reduce_range = reduce_range
        self._rounded: tuple[tuple[int, int], torch.Tensor] | None = None

    def weight(self, parameter: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """``matrix`` (``parameter`` or a view of it, output channels first) on its grid."""
        key = (parameter.data_ptr(), parameter._version)
        if self._rounded is None or self._rounded[0] != key:
            rounded = fake_quantize_weight(matrix.detach(), self.bits, self.symmetric,
                                           self.per_channel)
            self._rounded = (key, rounded)
        return straight_through(matrix, self._rounded[1])

    def input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantize_activations:
            return x
        return fake_quantize_dynamic(x, self.reduce_range)

    def describe(self) -> str:
        acts = (f"{7 if self.reduce_range else 8}-bit dynamic" if self.quantize_activations
                else "float")
        return f"bits={self.bits}, activations={acts}"


_T = TypeVar("_T")


class _SchemeField(Generic[_T]):
    """A read-only layer attribute that reads the field of the same name of the layer's
    ``_scheme`` (a property without a setter, written once)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, layer: None, owner: type) -> _SchemeField[_T]: ...

    @overload
    def __get__(self, layer: _SchemeAttributes, owner: type) -> _T: ...

    def __get__(self, layer: _SchemeAttributes | None, owner: type) -> _SchemeField[_T] | _T:
        return self if layer is None else cast(_T, getattr(layer._scheme, self.name))

    def __set__(self, layer: _SchemeAttributes, value: _T) -> None:
        raise AttributeError(f"{self.name!r} of {type(layer).__name__!r} object has no setter")


class _SchemeAttributes:
    """The scheme's fields read as the layer's own (``layer.bits``, ``layer.reduce_range``...), as
    the seed API exposes them."""

    _scheme: _FakeQuantScheme

    bits = _SchemeField[int]()
    symmetric = _SchemeField[bool]()
    per_channel = _SchemeField[bool]()
    quantize_activations = _SchemeField[bool]()
    reduce_range = _SchemeField[bool]()


class FakeQuantizeLinear(_SchemeAttributes, nn.Linear):
    """``nn.Linear`` with int8 fake quantization of its weight and (optionally) its input.

    Args:
        bits: weight bits, 2 to 8.
        symmetric, per_channel: the weight scheme (fxquant's default: symmetric per channel).
        quantize_activations: also fake-quantize the input, per tensor from each batch's range
            (what fxquant's dynamic mode does at inference).
        reduce_range: 7-bit activations. ``None`` (default): as ``RealQuantizeLinear`` decides
            it (7-bit exactly for 8-bit weights), so the simulation matches the int8 model.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bits: int = 8,
        *,
        symmetric: bool = True,
        per_channel: bool = True,
        quantize_activations: bool = True,
        reduce_range: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        _check_bits(bits)
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._scheme = _FakeQuantScheme(bits, symmetric, per_channel, quantize_activations,
                                        reduce_range)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, **options: Any) -> FakeQuantizeLinear:
        """A FakeQuantizeLinear holding a copy of ``linear``'s parameters."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, bits,
                    device=linear.weight.device, dtype=linear.weight.dtype, **options)
        layer.load_state_dict(linear.state_dict())
        return layer.train(linear.training)

    def quantized_weight(self) -> torch.Tensor:
        """The weight rounded to its int8 grid, with a straight-through gradient."""
        return self._scheme.weight(self.weight, self.weight)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quantize_dynamic(x, self.reduce_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._scheme.input(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._scheme.describe()}"


class FakeQuantizeConv1D(_SchemeAttributes, nn.Module):
    """GPT-2's ``Conv1D`` (``y = x @ W + b``, ``W`` stored ``[in, out]``) with fake quantization:
    the weight is rounded per output feature (rows of ``W.t()``, the ``nn.Linear`` it equals).
    Same parameters and state_dict keys as ``Conv1D`` (``weight`` ``[in, out]``, ``bias``)."""

    def __init__(self, conv: Conv1D, scheme: _FakeQuantScheme) -> None:
        super().__init__()
        self.nf, self.nx = conv.nf, conv.nx
        self.weight, self.bias = conv.weight, conv.bias
        self._scheme = scheme

    @property
    def in_features(self) -> int:
        return self.nx

    @property
    def out_features(self) -> int:
        return self.nf

    def quantized_weight(self) -> torch.Tensor:
        """The equivalent ``nn.Linear`` weight ``W.t()`` ``[out, in]`` on its grid."""
        return self._scheme.weight(self.weight, self.weight.t())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._scheme.input(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.nx}, {self._scheme.describe()}"


class _FakeQuantizeConv(_SchemeAttributes):
    """The forward pass of the fake-quant convolutions (``_conv_forward`` is ``nn.ConvNd``'s)."""

    if TYPE_CHECKING:  # what the mixin reads of the nn.Conv1d / nn.Conv2d it is mixed into
        weight: torch.Tensor
        bias: torch.Tensor | None

        def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None) -> torch.Tensor: ...

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self._scheme.weight(self.weight, self.weight)
        return self._conv_forward(self._scheme.input(x), weight, self.bias)


class FakeQuantizeConv1d(_FakeQuantizeConv, nn.Conv1d):
    """``nn.Conv1d`` (zero padding) with fake quantization of its weight and input."""


class FakeQuantizeConv2d(_FakeQuantizeConv, nn.Conv2d):
    """``nn.Conv2d`` (zero padding) with fake quantization of its weight and input."""


class FakeQuantizeEmbedding(_SchemeAttributes, nn.Embedding):
    """``nn.Embedding`` whose table is rounded per row (the int8 table fxquant gathers from)."""

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        weight = self._scheme.weight(self.weight, self.weight)
        return F.embedding(indices, weight, self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)


_CONVS: dict[type, type] = {nn.Conv1d: FakeQuantizeConv1d, nn.Conv2d: FakeQuantizeConv2d}


def _adopt(module: nn.Module, cls: type, scheme: _FakeQuantScheme) -> nn.Module:
    """``module`` (a layer of the model's copy) turned into its fake-quant twin in place: the same
    parameter objects (tied weights stay tied), buffers, hooks and training mode."""
    module.__class__ = cls
    cast(_SchemeAttributes, module)._scheme = scheme  # module is a ``cls`` now
    return module


def fake_quant_layer(module: nn.Module, bits: int, embedding_bits: int,
                     options: dict[str, Any]) -> nn.Module | None:
    """The fake-quant twin of one layer (sharing its parameters), or None for other modules."""
    kind = type(module)
    if kind is nn.Linear:
        return _adopt(module, FakeQuantizeLinear, _FakeQuantScheme(bits, **options))
    if is_conv1d(module):
        return FakeQuantizeConv1D(module, _FakeQuantScheme(bits, **options)).train(
            module.training)
    if kind in _CONVS and module.padding_mode == "zeros":
        return _adopt(module, _CONVS[kind], _FakeQuantScheme(bits, **options))
    if kind is nn.Embedding and module.max_norm is None:
        scheme = _FakeQuantScheme(embedding_bits, options["symmetric"], True, False, None)
        return _adopt(module, FakeQuantizeEmbedding, scheme)
    return None


def apply_fake_quant_to_model(
    model: nn.Module,
    bits: int = 8,
    *,
    quantize_activations: bool = True,
    reduce_range: bool | None = None,
    embedding_bits: int = 8,
) -> nn.Module:
    """A copy of ``model`` in which every ``nn.Linear``, GPT-2 ``Conv1D``, ``nn.Conv1d`` /
    ``nn.Conv2d`` (zero padding) and ``nn.Embedding`` is its fake-quant twin with the same weights
    (``bits`` for matmul and conv weights, ``embedding_bits`` for tables). Tied weights stay tied.
    The copy keeps ``model``'s training mode; ``model`` is unchanged."""
    _check_bits(bits)
    _check_bits(embedding_bits)
    options = dict(symmetric=True, per_channel=True, quantize_activations=quantize_activations,
                   reduce_range=reduce_range)

    def replace(module: nn.Module) -> nn.Module:
        # Exact classes only: subclasses (MultiheadAttention's out_proj) are read by their
        # owner's own code.
        twin = fake_quant_layer(module, bits, embedding_bits, options)
        if twin is not None:
            return twin
        for name, child in list(module.named_children()):
            setattr(module, name, replace(child))
        return module

    return replace(copy.deepcopy(model))
