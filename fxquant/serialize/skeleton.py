"""The float architecture a load replays on: parameters on the meta device, buffers computed.

``fxquant.load`` must not materialize fp32 weights, yet the model's non-persistent buffers (a
rotary embedding's ``inv_freq``, causal masks) are in no file: they are whatever the model's own
constructor computes. So the skeleton is built with :func:`meta_parameters`: every parameter is
moved to the meta device the moment it is registered, while buffers stay as the constructor made
them, on the CPU, bit for bit what the saved model had. Persistent buffers are then replaced by
the saved tensors like everything else in ``state_dict()``.

A float skeleton the user passes (any init, or meta) is copied with its parameters on meta; its
non-persistent buffers must be real (built on the CPU), else the load says which one is missing.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from torch import nn

from ..errors import SaveLoadError
from .format import ModelInfo

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def _to_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> nn.Parameter | None:
    if param is None or param.is_meta:
        return None  # keep it: already meta, or a tie to a parameter moved before
    moved = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
    moved.__dict__.update(param.__dict__)  # flags libraries set on parameters
    return moved


@contextlib.contextmanager
def meta_parameters() -> Iterator[None]:
    """Within this block, modules register their parameters on the meta device (their buffers
    stay where the module's code puts them). The hook is process-wide while the block runs."""
    # torch types the hook as returning None, but its docstring and code take a returned parameter
    # as the replacement, which is the point here.
    handle = nn.modules.module.register_module_parameter_registration_hook(
        _to_meta  # type: ignore[arg-type]
    )
    try:
        yield
    finally:
        handle.remove()


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of a float skeleton whose parameters are on meta (ties kept); ``model`` is not
    changed."""
    memo: dict[int, Any] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in memo:
            memo[id(p)] = nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)
    copied = copy.deepcopy(model, memo)
    for module in copied.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks):
            hooks.clear()
    return copied.eval()


def hf_skeleton(directory: Path, info: ModelInfo) -> nn.Module:
    """The saved Hugging Face model's class, built from the folder's ``config.json`` with meta
    parameters."""
    import transformers

    cls = getattr(transformers, info.class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise SaveLoadError(
            f"{directory} holds a {info.class_name} ({info.module}), which is not a model class "
            f"of the installed transformers {transformers.__version__}: pass the float model "
            "(any weights, or built on the meta device) as fxquant.load(directory, model=...)."
        )
    try:
        config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise SaveLoadError(
            f"{directory / 'config.json'} cannot be read as a transformers config ({exc}); pass "
            "the float model as fxquant.load(directory, model=...)."
        ) from None
    kwargs = {"attn_implementation": info.attn_implementation} if info.attn_implementation else {}
    with meta_parameters():
        model = cls._from_config(config, **kwargs)
    if (directory / "generation_config.json").is_file():
        model.generation_config = transformers.GenerationConfig.from_pretrained(
            directory, local_files_only=True)
    return model.eval()


def unmaterialized(model: nn.Module) -> list[str]:
    """Names of parameters and buffers still on the meta device."""
    tensors = [*model.named_parameters(remove_duplicate=False),
               *model.named_buffers(remove_duplicate=False)]
    return [name for name, t in tensors if t.is_meta]


def is_hf_model(model: nn.Module) -> TypeGuard[PreTrainedModel]:
    """Whether ``model`` is a transformers ``PreTrainedModel`` (without importing
    transformers)."""
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(model, transformers.PreTrainedModel)


def check_class(model: nn.Module, info: ModelInfo, source_class: str) -> None:
    """Refuse a skeleton of another class than the saved model's."""
    want = info.class_name if info.kind == "transformers" else source_class
    if type(model).__name__ != want:
        raise SaveLoadError(
            f"the saved model is a quantized {want}, but the float model passed to fxquant.load "
            f"is a {type(model).__name__}: pass an instance of {want} built with the same "
            "configuration (any weights, or on the meta device)."
        )
