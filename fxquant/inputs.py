"""How fxquant reads a model's inputs: the one place the input forms are defined.

An *example* (``example_inputs``) and each *calibration batch* take one of these forms:

    a tuple or list                positional arguments: ``model(*inputs)``
    a dict / Mapping               keyword arguments: ``model(**inputs)`` (a tokenizer's
                                   ``BatchEncoding`` is a Mapping)
    anything else (one tensor)     the single positional argument: ``model(inputs)``

``calibration`` is an iterable of such batches: a list, a generator or a DataLoader. A batch tuple
longer than the example (a DataLoader of ``(inputs, labels)``) is cut to the example's length. Every
batch must have the example's form: the same keyword names, or positional where the example was.
"""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import CalibrationError, ExampleInputError, NonFiniteError


@dataclass(frozen=True)
class ModelInputs:
    """One call's arguments: ``model(*args, **kwargs)``."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def call(self, model: nn.Module) -> Any:
        return model(*self.args, **self.kwargs)

    def describe(self) -> str:
        def one(v: Any) -> str:
            if isinstance(v, torch.Tensor):
                return f"Tensor{tuple(v.shape)}:{str(v.dtype).removeprefix('torch.')}"
            return type(v).__name__

        parts = [one(a) for a in self.args] + [f"{k}={one(v)}" for k, v in self.kwargs.items()]
        return f"({', '.join(parts)})"


def as_model_inputs(value: Any) -> ModelInputs:
    """An example or calibration batch in any of the forms above, as ``ModelInputs``."""
    if isinstance(value, ModelInputs):
        return value
    if isinstance(value, Mapping):
        keys = [k for k in value if not isinstance(k, str)]
        if keys:
            raise ExampleInputError(
                f"input dict keys must be argument names (str); got {keys[0]!r}."
            )
        return ModelInputs((), dict(value))
    if isinstance(value, (tuple, list)):
        return ModelInputs(tuple(value), {})
    return ModelInputs((value,), {})


def check_signature(model: nn.Module, inputs: ModelInputs) -> None:
    """Refuse inputs that cannot bind to ``model.forward``, naming the input at fault."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):  # a builtin forward: nothing to check against
        return
    params = sig.parameters
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    extra = _extra_keywords(model, params)
    unknown = [k for k in inputs.kwargs if k not in named and extra is not None and k not in extra]
    if unknown:
        raise ExampleInputError(
            f"{type(model).__name__}.forward takes no argument named {unknown[0]!r} (it takes "
            f"{', '.join(sorted(named)) or 'no named arguments'}). Remove that key from the input "
            "dict, or pass the inputs as a tuple in the order of forward's parameters."
        )
    try:
        sig.bind(*inputs.args, **inputs.kwargs)
    except TypeError as exc:
        raise ExampleInputError(
            f"example inputs {inputs.describe()} do not match {type(model).__name__}.forward{sig}: "
            f"{exc}. A tuple is positional arguments, a dict keyword arguments."
        ) from None


def _extra_keywords(model: nn.Module, params: Mapping[str, inspect.Parameter]) -> set[str] | None:
    """The names ``**kwargs`` accepts: none without ``**kwargs``, all (None) for a plain
    ``**kwargs``, the keys of the TypedDict of an ``**kwargs: Unpack[...]``. A Hugging Face
    model's ``**kwargs`` takes ``TransformersKwargs`` (it silently ignores anything else, so a
    misspelt ``attention_mask`` would go unnoticed)."""
    var = [p for p in params.values() if p.kind is p.VAR_KEYWORD]
    if not var:
        return set()
    args = typing.get_args(var[0].annotation)
    if args and typing.is_typeddict(args[0]):
        return _typeddict_keys(args[0])
    transformers = sys.modules.get("transformers")
    if transformers is not None and isinstance(model, transformers.PreTrainedModel):
        from transformers.utils.generic import TransformersKwargs

        # Decorators take these before forward's own signature does (past_key_values is the
        # deprecated name of transformers 5's `cache`).
        return _typeddict_keys(TransformersKwargs) | {"past_key_values", "return_dict"}
    return None


def _typeddict_keys(td: Any) -> set[str]:
    return set(td.__required_keys__) | set(td.__optional_keys__)


def _structure(inputs: ModelInputs) -> tuple[int, tuple[str, ...]]:
    return len(inputs.args), tuple(sorted(inputs.kwargs))


def check_finite(inputs: ModelInputs, index: int) -> None:
    """Refuse calibration batch ``index`` if a floating-point input holds NaN or Inf."""
    named = [(f"input {i}", a) for i, a in enumerate(inputs.args)] + list(inputs.kwargs.items())
    for name, value in named:
        floating = isinstance(value, torch.Tensor) and value.is_floating_point()
        if floating and not torch.isfinite(value).all():
            raise NonFiniteError(
                f"calibration batch {index}, {name}, holds NaN or Inf. Clean the calibration "
                "data: a non-finite value would make every downstream scale NaN."
            )


def calibration_batches(batches: Iterable[Any], example: ModelInputs) -> Iterator[ModelInputs]:
    """Each calibration batch as ``ModelInputs``, checked against the example's form.

    Raises :class:`CalibrationError` for a batch whose form differs from the example's (other
    keyword names, keywords where the example was positional) and :class:`NonFiniteError` for
    NaN/Inf, naming the batch.
    """
    if isinstance(batches, (torch.Tensor, Mapping)) or not isinstance(batches, Iterable):
        raise CalibrationError(
            f"calibration must be an iterable of batches (a list, generator or DataLoader); got "
            f"one {type(batches).__name__}. Wrap a single batch in a list: calibration=[batch]."
        )
    n_args, keys = _structure(example)
    for index, batch in enumerate(batches):
        inputs = as_model_inputs(batch)
        if n_args and len(inputs.args) > n_args and not inputs.kwargs:
            inputs = ModelInputs(inputs.args[:n_args], {})  # (inputs, labels) from a DataLoader
        got_args, got_keys = _structure(inputs)
        if got_keys != keys or (n_args and got_args != n_args) or (not n_args and got_args):
            raise CalibrationError(
                f"calibration batch {index} is {inputs.describe()} but the example inputs were "
                f"{example.describe()}: every batch must take the example's form (the same keyword "
                "names, or the same number of positional inputs)."
            )
        check_finite(inputs, index)
        yield inputs
