"""Typed, frozen configuration for fxquant.

A QuantConfig is data: it validates itself on construction, round-trips through ``to_dict`` /
``from_dict`` (that dict is what the ONNX export stores as metadata), and carries a version so an
old dict can be recognised.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError

Mode = Literal["weight_only", "dynamic", "static"]
Granularity = Literal["per_channel", "per_tensor", "per_group"]
WeightMethod = Literal["rtn", "gptq", "awq"]
ActGranularity = Literal["per_tensor", "per_token"]
ActObserver = Literal["minmax", "moving_average", "percentile"]
CaptureMethod = Literal["auto", "symbolic_trace", "export", "regions"]

CONFIG_VERSION = 1
_MODES = ("weight_only", "dynamic", "static")
_GRANULARITIES = ("per_channel", "per_tensor", "per_group")
_METHODS = ("rtn", "gptq", "awq")
_ACT_GRANULARITIES = ("per_tensor", "per_token")
# Dynamic mode's activation granularity when QuantConfig.activation_granularity is None.
DYNAMIC_ACTIVATIONS: ActGranularity = "per_tensor"
_OBSERVERS = ("minmax", "moving_average", "percentile")
_CAPTURES = ("auto", "symbolic_trace", "export", "regions")


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how.

    Attributes:
        mode: ``"dynamic"`` (default) quantizes activations to int8 on the fly, per tensor, from
            each batch's own range: no calibration needed. ``"static"`` uses activation ranges
            calibrated ahead of time. ``"weight_only"`` keeps activations in float.
        weight_bits: bits per weight code, 2..8, stored in ``torch.int8`` buffers.
        weight_granularity: ``"per_channel"`` (one scale per output channel) or ``"per_tensor"``.
        weight_symmetric: symmetric weights (zero-point 0, codes in ``[-(2^(b-1)-1), 2^(b-1)-1]``)
            or asymmetric (full ``[-2^(b-1), 2^(b-1)-1]`` with a zero-point).
        activation_observer: static mode's range estimator: ``"minmax"``, ``"moving_average"``
            (min-max smoothed over batches) or ``"percentile"`` (histogram, clips outliers).
        percentile: the percentile the ``"percentile"`` observer keeps, e.g. 99.99.
        moving_average_momentum: weight of a new batch in the ``"moving_average"`` observer.
        pair_safe_weights: on AVX2 CPUs without VNNI, int8 GEMMs (fbgemm's and ONNX Runtime's)
            add pairs of u8*s8 products in 16 bits (``vpmaddubsw``), which saturates for 8-bit
            weights times 8-bit activations. With this on (the default), each output channel's
            scale is raised just enough that no adjacent pair of weight codes sums past 128, so
            saturation is impossible and activations keep all 8 bits. Measured on MiniLM it is
            more accurate than 7-bit weights or torch.ao's 7-bit activations
            (docs/kernel_choice.md). It applies to symmetric per-channel weights that feed the
            int8 GEMM or conv in dynamic and static modes (a conv's pairs are adjacent input
            channels at one kernel tap, as oneDNN's AVX2 conv adds them: docs/conv_kernels.md);
            weights of 7 bits or fewer are safe anyway.
        reduce_range: quantize activations to 7 bits (codes 0..127), torch.ao's way of avoiding
            the same saturation. With 8-bit weights, ``reduce_range=False`` and
            ``pair_safe_weights=False`` the fast kernel can saturate (measured: 11% output error
            on the seed MLP against 1.6%); fxquant warns when asked for it.
        embedding_bits: bits per code of embedding tables that are only gathered (never multiplied
            by the int8 GEMM, so no saturation guard applies), 2..8. A table tied to a matmul
            weight (GPT-2's ``lm_head``) uses ``weight_bits``.
        quantize_embeddings: also store ``nn.Embedding`` / ``F.embedding`` tables as int8, one
            scale per row.
        skip: module names (qualified, as in ``model.named_modules()``) left in float. A name also
            skips everything below it.
        layer_bits: per-layer weight bits, ``((module name, bits), ...)``: the named modules (and
            everything below them) take these bits instead of ``weight_bits`` /
            ``embedding_bits``; the last entry naming a layer wins. Mixed precision
            (``fxquant.quantize_to_target(..., keep=8)`` keeps its most sensitive layers at 8 bits
            this way). An 8-bit layer gets pair-safe scales where the config asks for them.
        leaf_modules: module classes the tracer keeps as opaque calls instead of tracing into.
        min_weight_elements: layers with fewer weights stay float (tiny layers gain nothing).
        capture: how the model becomes graphs. ``"regions"`` keeps a copy of the model's own
            module tree as the shell and compiles its largest submodules that capture cleanly
            (a decoder's MLP, each attention projection, ...), so the result is still the user's
            model class: keyword arguments, KV cache, output dataclasses and ``generate`` work.
            ``"symbolic_trace"`` / ``"export"`` capture the whole model as one GraphModule.
            ``"auto"`` (default) uses regions for Hugging Face ``PreTrainedModel``s and, for any
            other model, whole-model ``symbolic_trace``, then ``torch.export`` (non-strict,
            dynamic shapes), then regions when both fail.
        weight_granularity ``"per_group"``: one scale (and zero-point) per ``group_size``
            consecutive input channels of each output row; weight-only mode, 2..8 bits, codes of
            4 bits or fewer stored two per byte (docs/accuracy.md). A linear whose input width
            ``group_size`` does not divide stays per-channel, and the record says why.
        group_size: input channels per group for ``"per_group"`` weights (even; ONNX Runtime's
            ``MatMulNBits`` needs a power of two >= 16).
        weight_method: how weight codes are chosen. ``"rtn"``: round to nearest. ``"gptq"``:
            GPTQ, column by column with Hessian error compensation (``fxquant/algorithms/gptq.py``).
            ``"awq"``: AWQ's activation-aware input-channel scaling, then round to nearest. Both
            need calibration data, in every mode.
        gptq_damp: GPTQ's diagonal damping, relative to the Hessian's mean diagonal.
        gptq_act_order: GPTQ quantizes input channels in decreasing Hessian diagonal order (group
            parameters stay those of the natural order: "static groups").
        gptq_block_size: columns per lazy GPTQ update.
        gptq_clip_search: GPTQ's group ranges are shrunk (by up to 25%) where that lowers the
            group's rounding error, as the reference implementation's ``mse`` option (MiniLM
            4-bit: cosine 0.9862 -> 0.9881); group-wise weights only.
        awq_grid: how many values of AWQ's exponent alpha in [0, 1) are tried.
        smoothquant_alpha: SmoothQuant's migration strength (0.5 in the paper); None: off. Moves
            activation outliers into the weights before int8 quantization (dynamic and static
            modes; needs calibration data).
        activation_granularity: dynamic mode's activation quantization: ``"per_tensor"`` (one
            range per batch) or ``"per_token"`` (each row scaled by its own abs-max first).
            None: dynamic mode's default (``DYNAMIC_ACTIVATIONS``). Static mode's calibrated
            ranges are per tensor; weight-only has no quantized activations.
    """

    mode: Mode = "dynamic"
    weight_bits: int = 8
    weight_granularity: Granularity = "per_channel"
    weight_symmetric: bool = True
    activation_observer: ActObserver = "minmax"
    percentile: float = 99.99
    moving_average_momentum: float = 0.1
    pair_safe_weights: bool = True
    reduce_range: bool = False
    embedding_bits: int = 8
    quantize_embeddings: bool = True
    skip: tuple[str, ...] = ()
    layer_bits: tuple[tuple[str, int], ...] = ()
    leaf_modules: tuple[type, ...] = field(default=(), compare=False)
    min_weight_elements: int = 0
    capture: CaptureMethod = "auto"
    group_size: int = 128
    weight_method: WeightMethod = "rtn"
    gptq_damp: float = 0.01
    gptq_act_order: bool = True
    gptq_block_size: int = 128
    gptq_clip_search: bool = True
    awq_grid: int = 20
    smoothquant_alpha: float | None = None
    activation_granularity: ActGranularity | None = None
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ConfigError(f"unknown mode {self.mode!r}: choose one of {', '.join(_MODES)}.")
        if not isinstance(self.weight_bits, int) or not 2 <= self.weight_bits <= 8:
            raise ConfigError(
                f"weight_bits={self.weight_bits!r} is impossible: fxquant stores weight codes "
                "in int8, so choose an integer from 2 to 8."
            )
        if not isinstance(self.embedding_bits, int) or not 2 <= self.embedding_bits <= 8:
            raise ConfigError(f"embedding_bits={self.embedding_bits!r}: choose 2 to 8.")
        if self.weight_granularity not in _GRANULARITIES:
            raise ConfigError(
                f"unknown weight_granularity {self.weight_granularity!r}: "
                f"choose one of {', '.join(_GRANULARITIES)}."
            )
        if self.activation_observer not in _OBSERVERS:
            raise ConfigError(
                f"unknown activation_observer {self.activation_observer!r}: "
                f"choose one of {', '.join(_OBSERVERS)}."
            )
        if self.capture not in _CAPTURES:
            raise ConfigError(
                f"unknown capture {self.capture!r}: choose one of {', '.join(_CAPTURES)}."
            )
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile={self.percentile} must lie in (50, 100].")
        if not 0.0 < self.moving_average_momentum <= 1.0:
            raise ConfigError("moving_average_momentum must lie in (0, 1].")
        if isinstance(self.skip, str):
            raise ConfigError("skip must be a tuple of module names, not one string.")
        object.__setattr__(self, "skip", tuple(self.skip))
        object.__setattr__(self, "layer_bits", _layer_bits(self.layer_bits))
        object.__setattr__(self, "leaf_modules", tuple(self.leaf_modules))
        _check_accuracy_options(self)

    @property
    def needs_pair_safe_weights(self) -> bool:
        """Whether GEMM weights get pair-safe scales (see ``pair_safe_weights``)."""
        return self.needs_pair_safe(self.weight_bits)

    def needs_pair_safe(self, bits: int) -> bool:
        """Whether a GEMM weight of ``bits`` bits gets pair-safe scales in this config."""
        return (
            self.pair_safe_weights
            and bits == 8
            and not self.reduce_range
            and self.weight_symmetric
            and self.weight_granularity == "per_channel"
            and self.mode != "weight_only"
        )

    @property
    def per_token_activations(self) -> bool:
        """Whether dynamic-mode linears quantize their input per token."""
        granularity = self.activation_granularity or DYNAMIC_ACTIVATIONS
        return self.mode == "dynamic" and granularity == "per_token"

    @property
    def calibration_needed_by(self) -> str | None:
        """What in this config needs calibration data (for error messages), or None."""
        if self.mode == "static":
            return "static mode"
        if self.smoothquant_alpha is not None:
            return f"SmoothQuant (smoothquant_alpha={self.smoothquant_alpha})"
        if self.weight_method != "rtn":
            return f"weight_method={self.weight_method!r}"
        return None

    @property
    def may_saturate(self) -> bool:
        """True when 8-bit weight codes can meet 8-bit activations in an AVX2 int8 GEMM."""
        return (
            self.weight_bits == 8
            and not self.reduce_range
            and self.mode != "weight_only"
            and not self.needs_pair_safe_weights
        )

    def bits_for(self, layer: str, default: int) -> int:
        """The weight bits of ``layer`` (a module name): its ``layer_bits`` entry, else
        ``default``. An empty name in ``layer_bits`` covers every layer."""
        for name, bits in reversed(self.layer_bits):
            if not name or layer == name or layer.startswith(name + "."):
                return bits
        return default

    def replace(self, **changes: Any) -> QuantConfig:
        """A copy with some fields changed (and validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; leaf module classes are written as qualified names."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["skip"] = list(self.skip)
        out["layer_bits"] = [list(entry) for entry in self.layer_bits]
        out["leaf_modules"] = [f"{c.__module__}.{c.__qualname__}" for c in self.leaf_modules]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        """Inverse of :meth:`to_dict`. Leaf module classes cannot be rebuilt from names and are
        dropped; unknown keys are an error so a typo does not pass silently."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown QuantConfig fields: {sorted(unknown)}")
        if data.get("version", CONFIG_VERSION) > CONFIG_VERSION:
            raise ConfigError(
                f"config version {data['version']} is newer than this fxquant understands "
                f"({CONFIG_VERSION}); upgrade fxquant."
            )
        kwargs = {k: v for k, v in data.items() if k != "leaf_modules"}
        if "skip" in kwargs:
            kwargs["skip"] = tuple(kwargs["skip"])
        if "layer_bits" in kwargs:
            kwargs["layer_bits"] = tuple(tuple(entry) for entry in kwargs["layer_bits"])
        return cls(**kwargs)


def _layer_bits(entries: Any) -> tuple[tuple[str, int], ...]:
    """``layer_bits`` as a tuple of (name, bits) pairs, each checked."""
    out = []
    for entry in entries:
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise ConfigError(f"layer_bits entry {entry!r}: give (module name, bits) pairs.")
        name, bits = entry
        if not isinstance(name, str):
            raise ConfigError(f"layer_bits entry {entry!r}: the module name must be a str.")
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ConfigError(f"layer_bits entry {entry!r}: choose bits from 2 to 8.")
        out.append((name, bits))
    return tuple(out)


def _check_choice(value: Any, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}.")


def _check_grouping(cfg: QuantConfig) -> None:
    if not isinstance(cfg.group_size, int) or cfg.group_size < 2 or cfg.group_size % 2:
        raise ConfigError(
            f"group_size={cfg.group_size!r}: choose an even integer >= 2 (codes are packed two "
            "per byte within a group; 32, 64 or 128 are usual)."
        )
    if cfg.weight_granularity == "per_group" and cfg.mode != "weight_only":
        raise ConfigError(
            f"weight_granularity='per_group' needs mode='weight_only' (got {cfg.mode!r}): the "
            "int8 GEMMs of dynamic and static modes take one weight scale per output channel."
        )


def _check_methods(cfg: QuantConfig) -> None:
    if not 0.0 < cfg.gptq_damp <= 1.0:
        raise ConfigError(f"gptq_damp={cfg.gptq_damp} must lie in (0, 1].")
    if not isinstance(cfg.gptq_block_size, int) or cfg.gptq_block_size < 1:
        raise ConfigError(f"gptq_block_size={cfg.gptq_block_size!r}: choose a positive integer.")
    if not isinstance(cfg.awq_grid, int) or cfg.awq_grid < 2:
        raise ConfigError(f"awq_grid={cfg.awq_grid!r}: choose an integer >= 2.")


def _check_smoothing(cfg: QuantConfig) -> None:
    alpha = cfg.smoothquant_alpha
    if alpha is None:
        return
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"smoothquant_alpha={alpha!r} must be None (off) or lie in [0, 1].")
    if cfg.mode == "weight_only":
        raise ConfigError(
            "smoothquant_alpha is set in weight_only mode, where activations stay float: "
            "SmoothQuant only helps quantized activations (mode='dynamic' or 'static'). For "
            "weights alone, weight_method='awq' scales input channels the same way."
        )
    if cfg.weight_method == "awq":
        raise ConfigError(
            "smoothquant_alpha and weight_method='awq' both rescale the input channels of the "
            "same layers; choose one."
        )


def _check_accuracy_options(cfg: QuantConfig) -> None:
    """Validate the fields of outlier-aware and low-bit quantization."""
    _check_choice(cfg.weight_method, _METHODS, "weight_method")
    if cfg.activation_granularity is not None:
        _check_choice(cfg.activation_granularity, _ACT_GRANULARITIES, "activation_granularity")
        if cfg.activation_granularity == "per_token" and cfg.mode != "dynamic":
            raise ConfigError(
                f"activation_granularity='per_token' is for mode='dynamic' (got {cfg.mode!r}): "
                "static mode's activation ranges are calibrated per tensor, weight-only mode "
                "does not quantize activations."
            )
    _check_grouping(cfg)
    _check_methods(cfg)
    _check_smoothing(cfg)
    rescales = cfg.smoothquant_alpha is not None or cfg.weight_method == "awq"
    if rescales and cfg.mode == "static" and cfg.activation_observer != "minmax":
        raise ConfigError(
            f"static mode with input-channel scaling (SmoothQuant / AWQ) needs "
            f"activation_observer='minmax' (got {cfg.activation_observer!r}): the range of the "
            "scaled input is derived exactly from per-channel minima and maxima, which a "
            "histogram or a moving average cannot give."
        )
