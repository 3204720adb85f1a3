"""Fake quantizers: what quantization-aware training puts where PTQ puts observers.

A fake quantizer rounds a tensor, in float, exactly as the int8 model will (the same
:mod:`fxquant.numerics` calls the lowering and the kernels make), and lets gradients through:

    WeightFakeQuant       a weight on its per-channel (or per-tensor / per-group) grid, with the
                          config's bits and pair-safe rule; straight-through gradient. With a
                          learned scale (LSQ): the scale is a parameter, with LSQ's gradient.
    ActivationFakeQuant   a matmul's input, per tensor, as the mode does: ``dynamic`` from each
                          batch's own range; ``static`` from a moving average of batch ranges
                          (or, LSQ, a learned scale). Clipped straight-through gradient.

``insert_fake_quant`` builds them from the observers ``insert_observers`` chose (so QAT makes the
same decisions as PTQ), and ``freeze_fake_quant`` turns them back into observers holding what was
learned, so ``fxquant.convert`` lowers a trained model through the ordinary CONVERT passes.

The functions :func:`fake_quantize_weight` and :func:`fake_quantize_dynamic` are the seed
toolkit's ``FakeQuantizeLinear`` arithmetic too (``fxquant.fake_quant``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from . import numerics
from .errors import ConfigError, NonFiniteError
from .kernels import reference
from .observers import MovingAverageMinMaxObserver, Observer, WeightObserver
from .straight_through import straight_through

ActivationKind = Literal["dynamic", "dynamic_per_token", "static"]


# --- gradients -----------------------------------------------------------------------------------


class _ClippedStraightThrough(torch.autograd.Function):
    """Forward: ``numerics.fake_quantize``; backward: the gradient where ``x`` fell inside the
    grid's range, zero where it was clamped."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float, zero_point: int,
                qrange: numerics.QRange) -> torch.Tensor:
        lo = (qrange.qmin - zero_point) * scale
        hi = (qrange.qmax - zero_point) * scale
        ctx.save_for_backward((x >= lo) & (x <= hi))
        return numerics.fake_quantize(x, scale, zero_point, qrange)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def _along(t: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


class _LearnedStepSize(torch.autograd.Function):
    """LSQ (Esser et al., 2020): forward is ``numerics.fake_quantize`` with ``scale``; backward
    gives ``x`` the clipped straight-through gradient and ``scale`` the step-size gradient
    ``round(x/s) - x/s`` inside the range, ``q_bound - zp`` outside, times ``grad_factor``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                qrange: numerics.QRange, axis: int | None, grad_factor: float) -> torch.Tensor:
        s, z = (scale, zero_point) if axis is None else (_along(scale, x, axis),
                                                          _along(zero_point, x, axis))
        v = x / s
        q = torch.round(v) + z
        clamped = torch.clamp(q, qrange.qmin, qrange.qmax)
        inside = clamped == q
        ctx.save_for_backward(inside, torch.where(inside, torch.round(v) - v, clamped - z))
        ctx.axis, ctx.grad_factor, ctx.scale_shape = axis, grad_factor, scale.shape
        return (clamped - z) * s

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        inside, step = ctx.saved_tensors
        g_scale = grad * step * ctx.grad_factor
        if ctx.axis is None:
            g_scale = g_scale.sum().reshape(ctx.scale_shape)
        else:
            dims = [d for d in range(grad.dim()) if d != ctx.axis]
            g_scale = g_scale.sum(dim=dims).reshape(ctx.scale_shape)
        return grad * inside, g_scale, None, None, None, None


def fake_quantize_weight(
    weight: torch.Tensor, bits: int, symmetric: bool, per_channel: bool, *,
    pair_safe: bool = False,
) -> torch.Tensor:
    """``weight`` rounded to the grid ``numerics.quantize_weight`` gives it (codes dequantized),
    with a straight-through gradient."""
    with torch.no_grad():
        rounded = numerics.quantize_weight(weight, bits, symmetric, per_channel,
                                           pair_safe=pair_safe).dequantize()
    return straight_through(weight, rounded.to(weight.dtype))


def fake_quantize_dynamic(x: torch.Tensor, reduce_range: bool, *,
                          per_token: bool = False) -> torch.Tensor:
    """``x`` rounded per tensor from its own range (the ``fake_quantize_dynamic`` reference kernel:
    what dynamic mode's int8 matmul does to its input), with a straight-through gradient."""
    with torch.no_grad():
        xf = x.detach().float()
        rounded = (reference.fake_quantize_dynamic_per_token(xf, reduce_range) if per_token
                   else reference.fake_quantize_dynamic(xf, reduce_range))
    return straight_through(x, rounded.to(x.dtype))


# --- weights -------------------------------------------------------------------------------------


class WeightFakeQuant(nn.Module):
    """A weight fake quantizer with the scheme of the :class:`WeightObserver` it replaces.

    After :meth:`learn_scale` the per-channel scale (one value for a per-tensor weight) is a
    parameter trained with LSQ's gradient, set to the min-max (pair-safe) scale by the first
    call. The pair-safe floor (``numerics.pair_safe_scale``) is applied on every call, so a
    learned 8-bit scale can never make the AVX2 int8 kernel saturate.
    """

    initialized: torch.Tensor

    def __init__(self, observer: WeightObserver, channels: int) -> None:
        super().__init__()
        self.target = observer.target
        self.bits, self.symmetric = observer.bits, observer.symmetric
        self.per_channel, self.pair_safe = observer.per_channel, observer.pair_safe
        self.group_size: int | None = getattr(observer, "group_size", None)
        self.channels = channels
        self.observer = observer  # the scheme, and what freeze_fake_quant hands back
        self.scale: nn.Parameter | None = None

    def learn_scale(self) -> None:
        """Make the scale a trainable parameter (LSQ). Symmetric per-channel or per-tensor
        weights only: a learned zero-point or group scales are not supported."""
        if self.scale is not None:
            return
        if not self.symmetric or self.group_size:
            raise ConfigError(
                f"learned scales need symmetric per-channel or per-tensor weights; {self.target} "
                "is asymmetric or group-wise. Use weight_symmetric=True and "
                "weight_granularity='per_channel', or learnable_scales=False."
            )
        self.scale = nn.Parameter(torch.ones(self.channels if self.per_channel else 1))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def qrange(self) -> numerics.QRange:
        return numerics.weight_qrange(self.bits, self.symmetric)

    def effective_scale(self, weight: torch.Tensor) -> torch.Tensor:
        """The learned scale as the int8 model uses it: one per output channel, positive, and
        raised to the pair-safe floor where the scheme needs it."""
        assert self.scale is not None
        if not bool(self.initialized):
            with torch.no_grad():
                init = self._rounded(weight).scale
                self.scale.copy_(init if self.per_channel else init[:1])
                self.initialized.fill_(True)
        scale = self.scale.clamp(min=numerics.MIN_WEIGHT_SCALE).expand(weight.shape[0])
        return numerics.pair_safe_scale(weight.detach(), scale) if self.pair_safe else scale

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            with torch.no_grad():
                rounded = self.quantize(weight).dequantize().to(weight.dtype)
            return straight_through(weight, rounded)
        scale = self.effective_scale(weight)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        per_row = weight[0].numel()
        return _LearnedStepSize.apply(weight, scale, zero, self.qrange, 0,
                                      1.0 / math.sqrt(per_row * self.qrange.qmax))

    def _rounded(self, weight: torch.Tensor) -> Any:
        if self.group_size:
            return self.observer.quantize(weight)
        return numerics.quantize_weight(weight, self.bits, self.symmetric, self.per_channel,
                                        pair_safe=self.pair_safe)

    @torch.no_grad()
    def quantize(self, weight: torch.Tensor) -> Any:
        """The codes the int8 model stores for ``weight``: on the learned scale's grid, else
        exactly what lowering computes from the observer's scheme."""
        if self.scale is None:
            return self._rounded(weight)
        scale = self.effective_scale(weight).detach().float().contiguous()
        codes = numerics.quantize(weight.detach().float(), scale, 0, self.qrange, torch.int8,
                                  axis=0)
        return numerics.QuantizedWeight(codes, scale, torch.zeros_like(scale, dtype=torch.int32),
                                        0)

    def extra_repr(self) -> str:
        learned = ", learned scale" if self.scale is not None else ""
        return f"{self.observer.extra_repr()}{learned}"


# --- activations ---------------------------------------------------------------------------------


class ActivationFakeQuant(nn.Module):
    """An activation fake quantizer for the input of a quantized matmul.

    kind ``dynamic`` / ``dynamic_per_token``: each batch's own range (no state). kind ``static``:
    in training, a moving average of each batch's min and max (``momentum``) sets the range; in
    eval mode the range is frozen. After :meth:`learn_scale` (static only) the scale is a
    parameter trained with LSQ's gradient, starting from the range the first batch set (the
    zero-point stays). The first batch always sets the range, in either mode.
    """

    zero_point: torch.Tensor

    def __init__(self, target: str, kind: ActivationKind, reduce_range: bool, *,
                 momentum: float = 0.1) -> None:
        super().__init__()
        self.target, self.kind, self.reduce_range = target, kind, reduce_range
        self.observer = MovingAverageMinMaxObserver(target, momentum) if kind == "static" else None
        self.scale: nn.Parameter | None = None

    def learn_scale(self) -> None:
        """Static kind: make the scale a trainable parameter (LSQ), set by the first batch (or
        the moving average so far). Dynamic kinds have no scale to learn: nothing happens."""
        if self.kind != "static" or self.scale is not None:
            return
        self.scale = nn.Parameter(torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))
        if self.batches:
            self._init_scale()

    @property
    def qrange(self) -> numerics.QRange:
        return numerics.activation_qrange(self.reduce_range)

    @property
    def batches(self) -> int:
        return self.observer.batches if self.observer is not None else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind != "static":
            return fake_quantize_dynamic(x, self.reduce_range,
                                         per_token=self.kind == "dynamic_per_token")
        assert self.observer is not None
        if self.training or self.observer.batches == 0:
            self._observe(x)
        if self.scale is None:
            scale, zero_point = numerics.activation_qparams(*self.observer.quant_range(),
                                                            self.reduce_range)
            return _ClippedStraightThrough.apply(x, scale, zero_point, self.qrange)
        learned = self.scale.clamp(min=numerics.MIN_ACTIVATION_SCALE)
        return _LearnedStepSize.apply(x, learned, self.zero_point, self.qrange, None,
                                      1.0 / math.sqrt(x.numel() * self.qrange.qmax))

    def _observe(self, x: torch.Tensor) -> None:
        assert self.observer is not None
        first = self.observer.batches == 0
        try:
            self.observer(x)
        except NonFiniteError as exc:
            raise NonFiniteError(f"{exc} (during quantization-aware training)") from None
        if first and self.scale is not None:
            self._init_scale()

    @torch.no_grad()
    def _init_scale(self) -> None:
        assert self.observer is not None and self.scale is not None
        scale, zero_point = numerics.activation_qparams(*self.observer.quant_range(),
                                                        self.reduce_range)
        self.scale.fill_(scale)
        self.zero_point.fill_(zero_point)

    def quant_range(self) -> tuple[float, float]:
        """The range the int8 model uses: the moving average, or the learned scale's grid."""
        assert self.observer is not None
        if self.scale is None:
            return self.observer.quant_range()
        scale = max(float(self.scale.detach()), numerics.MIN_ACTIVATION_SCALE)
        zp = int(self.zero_point)
        return (self.qrange.qmin - zp) * scale, (self.qrange.qmax - zp) * scale

    def extra_repr(self) -> str:
        bits = 7 if self.reduce_range else 8
        learned = ", learned scale" if self.scale is not None else ""
        return f"target={self.target!r}, {self.kind}, {bits}-bit{learned}"


class FrozenRangeObserver(Observer):
    """An activation observer holding a range fixed in advance (what QAT learned)."""

    def __init__(self, target: str, lo: float, hi: float, batches: int) -> None:
        super().__init__(target)
        self.lo, self.hi = lo, hi
        self.batches = batches

    def observe(self, x: torch.Tensor, lo: float, hi: float) -> None:
        return None

    def quant_range(self) -> tuple[float, float]:
        self._require_data()
        return self.lo, self.hi
