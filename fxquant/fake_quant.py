"""Fake quantization for quantization-aware training: the seed document's ``FakeQuantizeLinear``
and ``apply_fake_quant_to_model``.

    fq_model = apply_fake_quant_to_model(model, bits=8)   # a copy; model is unchanged
    loss = criterion(fq_model(x), y); loss.backward(); optimizer.step()   # ordinary PyTorch

A ``FakeQuantizeLinear`` is an ``nn.Linear`` whose forward pass rounds, in float, exactly what
fxquant's dynamic int8 model rounds: the weight to int8 codes (symmetric, per output channel, as
``numerics.quantize_weight``) and the input to 7- or 8-bit codes from the batch's own range (as
the ``fake_quantize_dynamic`` reference kernel). Gradients pass through the rounding unchanged
(straight-through estimator), so the network learns weights that survive int8.

The state_dict keys are ``nn.Linear``'s (``weight``, ``bias``), so trained weights load back into
the float model, and ``convert_to_real_quant`` turns the layers into int8 ones.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from . import numerics
from .errors import ConfigError
from .kernels import reference
from .utils import kernel_safe_reduce_range, straight_through


class FakeQuantizeLinear(nn.Linear):
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
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        if not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ConfigError(f"bits={bits!r}: fake int8 quantization takes 2 to 8 bits.")
        self.bits = bits
        self.symmetric = symmetric
        self.per_channel = per_channel
        self.quantize_activations = quantize_activations
        if reduce_range is None:
            reduce_range = kernel_safe_reduce_range(
                bits, "dynamic" if quantize_activations else "weight_only"
            )
        self.reduce_range = reduce_range
        # The rounded weight, kept until the weight changes (its version counter moves on every
        # optimizer step and load_state_dict): inference does not re-round 400k weights a call.
        self._rounded: tuple[tuple[int, int], torch.Tensor] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, **options) -> FakeQuantizeLinear:
        """A FakeQuantizeLinear holding a copy of ``linear``'s parameters."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            bits,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            **options,
        )
        layer.load_state_dict(linear.state_dict())
        return layer.train(linear.training)

    def quantized_weight(self) -> torch.Tensor:
        """The weight rounded to its int8 grid, with a straight-through gradient."""
        key = (self.weight.data_ptr(), self.weight._version)
        if self._rounded is None or self._rounded[0] != key:
            with torch.no_grad():
                rounded = (
                    numerics.quantize_weight(
                        self.weight, self.bits, self.symmetric, self.per_channel
                    )
                    .dequantize()
                    .to(self.weight.dtype)
                )
            self._rounded = (key, rounded)
        return straight_through(self.weight, self._rounded[1])

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            rounded = reference.fake_quantize_dynamic(x.detach().float(), self.reduce_range)
        return straight_through(x, rounded.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantize_activations:
            x = self.quantized_input(x)
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        acts = (
            f"{7 if self.reduce_range else 8}-bit dynamic"
            if self.quantize_activations
            else ("float")
        )
        return f"{super().extra_repr()}, bits={self.bits}, activations={acts}"


def apply_fake_quant_to_model(
    model: nn.Module,
    bits: int = 8,
    *,
    quantize_activations: bool = True,
    reduce_range: bool | None = None,
) -> nn.Module:
    """A copy of ``model`` in which every ``nn.Linear`` is a :class:`FakeQuantizeLinear` with the
    same weights. The copy keeps ``model``'s training mode; ``model`` is unchanged."""
    options = dict(quantize_activations=quantize_activations, reduce_range=reduce_range)

    def replace(module: nn.Module) -> nn.Module:
        # Exact nn.Linear only: subclasses (MultiheadAttention's out_proj) are read by their
        # owner's own code.
        if type(module) is nn.Linear:
            return FakeQuantizeLinear.from_linear(module, bits, **options)
        for name, child in list(module.named_children()):
            setattr(module, name, replace(child))
        return module

    return replace(copy.deepcopy(model))
