"""``fxquant.load``: a saved folder back into a quantized model, without calibration and without
fp32 weights.

    1. check the folder: a manifest we can read, a weights file of the recorded size and hash
       (pickle-only folders are refused, never opened);
    2. the float skeleton with meta parameters (Hugging Face: from ``config.json``; otherwise a
       copy of the float model the caller passes);
    3. structural replay of the passes (``replay``): int8 buffers on meta, by shape;
    4. the saved tensors checked against the replayed ones (names, shapes, dtypes; the layer at
       fault named) and assigned; ties restored as one tensor; nothing may stay on meta.

Every check runs before the model is handed out: on any error the caller gets an exception and no
partially loaded model (their skeleton is never changed).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from ..errors import FormatError, SaveLoadError
from ..record import QuantRecord, record_of
from .format import MANIFEST_FILE, PICKLE_SUFFIXES, Manifest, read_manifest
from .layers import tensor_layers
from .replay import finish, replay
from .skeleton import check_class, hf_skeleton, meta_copy, unmaterialized
from .tensors import file_sha256, read_tensors


def _check_folder(directory: Path) -> None:
    if not directory.is_dir():
        raise SaveLoadError(f"{directory} is not a folder; pass the folder fxquant.save wrote.")
    if (directory / MANIFEST_FILE).is_file():
        return
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles and not any(directory.glob("*.safetensors")):
        raise FormatError(
            f"{directory} holds only pickle files ({', '.join(pickles[:3])}) and no safetensors: "
            "fxquant never unpickles (a pickle runs code when it is opened). Save models with "
            "fxquant.save, or convert float checkpoints to safetensors."
        )


def _check_weights(directory: Path, manifest: Manifest, verify: bool) -> Path:
    path = directory / manifest.weights.file
    if path.name != manifest.weights.file or not path.is_file():
        raise FormatError(f"{path} is missing; the save is incomplete. Save the model again.")
    size = path.stat().st_size
    if size != manifest.weights.size_bytes:
        raise FormatError(
            f"{path} has {size:,} bytes where the save wrote {manifest.weights.size_bytes:,}: it "
            "is truncated or was replaced. Copy it again, or save the model again."
        )
    if verify and file_sha256(path) != manifest.weights.sha256:
        raise FormatError(
            f"{path} does not match the SHA-256 recorded in {MANIFEST_FILE}: its bytes were "
            "changed (a damaged copy?). Copy it again, or save the model again."
        )
    return path


def _skeleton(directory: Path, manifest: Manifest, model: nn.Module | None) -> nn.Module:
    if model is None:
        if manifest.model.kind != "transformers":
            raise SaveLoadError(
                f"{directory} holds a quantized {manifest.record.source_class}, which fxquant "
                "cannot build by itself: pass the float model (any weights, or built on the "
                f"meta device) as fxquant.load({str(directory)!r}, model=...)."
            )
        return hf_skeleton(directory, manifest.model)
    check_class(model, manifest.model, manifest.record.source_class)
    return meta_copy(model)


def _config(manifest: Manifest, skeleton: nn.Module):
    """The saved QuantConfig, its leaf module classes found among the skeleton's own."""
    names = set(manifest.leaf_modules)
    classes = {f"{type(m).__module__}.{type(m).__qualname__}": type(m) for m in skeleton.modules()}
    leaves = tuple(c for n, c in classes.items() if n in names)
    return manifest.record.config.replace(leaf_modules=leaves)


def _state(tensors: dict[str, torch.Tensor], aliases: dict[str, str]) -> dict[str, torch.Tensor]:
    for key, canonical in aliases.items():
        if canonical not in tensors:
            raise FormatError(f"tensor {key!r} is recorded as a copy of {canonical!r}, which "
                              "the weights file does not hold; the save is damaged.")
    return {**tensors, **{key: tensors[canonical] for key, canonical in aliases.items()}}


def _check_state(model: nn.Module, state: dict[str, torch.Tensor], record: QuantRecord) -> None:
    expected = model.state_dict(keep_vars=True)
    layers = tensor_layers(model, record)

    def where(key: str) -> str:
        return f"{key!r} (layer {layers.get(key, key.rpartition('.')[0] or key)})"

    for keys, problem in (
        ([k for k in expected if k not in state],
         "the weights file lacks {n} tensor(s) the model needs, first {first}: the file is not "
         "this model's (or was edited). Save the model again."),
        ([k for k in state if k not in expected],
         "the weights file holds {n} tensor(s) the rebuilt model has no place for, first "
         "{first}: the float model passed is not the one that was quantized, or the file was "
         "edited."),
    ):
        if keys:
            raise FormatError(problem.format(n=len(keys), first=where(keys[0])))
    for key, want in expected.items():
        got = state[key]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise SaveLoadError(
                f"{where(key)}: the float model gives {want.dtype} {list(want.shape)}, the file "
                f"holds {got.dtype} {list(got.shape)}. Pass the float model with the "
                "configuration (sizes) of the one that was quantized."
            )


def _as_parameters(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameters wrapped once per tensor, so keys sharing a tensor get one Parameter object."""
    params = dict(model.named_parameters(remove_duplicate=False))
    wrapped: dict[int, nn.Parameter] = {}
    out = dict(state)
    for key, t in state.items():
        if key in params:
            if id(t) not in wrapped:
                wrapped[id(t)] = nn.Parameter(t, requires_grad=params[key].requires_grad)
            out[key] = wrapped[id(t)]
    return out


def load(directory: str | os.PathLike[str], model: nn.Module | None = None, *,
         verify: bool = True) -> nn.Module:
    """Load a model saved by :func:`fxquant.save`: the same int8 model, outputs bit-identical.

    Args:
        directory: the folder ``fxquant.save`` wrote.
        model: the float model the quantized one was made from, as a skeleton: any weights, or
            built on the meta device; it is not changed. Not needed for Hugging Face models,
            which are built from the folder's ``config.json``.
        verify: check the weights file's SHA-256 first (about 0.2 s per 100 MB).

    Returns the quantized model (eval mode), with ``fxquant.record_of`` as when it was saved.
    """
    start = time.perf_counter()
    folder = Path(directory)
    _check_folder(folder)
    manifest = read_manifest(folder)
    weights = _check_weights(folder, manifest, verify)
    skeleton = _skeleton(folder, manifest, model)
    versions = ", ".join(f"{k} {v}" for k, v in manifest.versions.items())
    qmodel = replay(skeleton, manifest.record, _config(manifest, skeleton), manifest.replay,
                    f"saved with {versions}")
    record = record_of(qmodel)
    assert record is not None
    state = _state(read_tensors(weights), manifest.weights.aliases)
    _check_state(qmodel, state, record)
    qmodel.load_state_dict(_as_parameters(qmodel, state), strict=True, assign=True)
    del state
    left = unmaterialized(qmodel)
    if left:
        raise SaveLoadError(
            f"{left[0]} (and {len(left) - 1} more) is neither saved nor computed by the model's "
            "constructor (a non-persistent buffer of a float model built on the meta device): "
            "build the float model passed to fxquant.load on the CPU."
        )
    qmodel = finish(qmodel, record)
    record.timings["load"] = time.perf_counter() - start
    return qmodel.eval()
