"""``fxquant.save``: a quantized model as a folder of safetensors and JSON, written atomically.

The folder is built under a temporary name beside the target and renamed into place when every
file is written, so a reader sees the previous save or the new one, never half of one. An existing
folder is replaced only when it is an earlier fxquant save (or empty).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .._version import __version__
from ..errors import SaveLoadError
from ..record import QuantRecord, record_of, stage_of
from .format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Manifest,
    ModelInfo,
    WeightsInfo,
)
from .replay import replay_info
from .skeleton import is_hf_model
from .tensors import bytes_by_dtype, file_sha256, unique_tensors, write_tensors

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def versions() -> dict[str, str]:
    """The versions of fxquant, torch, safetensors, Python (and transformers when loaded)
    that wrote a file."""
    import safetensors

    out = {"fxquant": __version__, "torch": torch.__version__,
           "safetensors": safetensors.__version__, "python": platform.python_version()}
    transformers = sys.modules.get("transformers")
    if transformers is not None:
        out["transformers"] = transformers.__version__
    return out


def _converted_record(model: nn.Module) -> QuantRecord:
    record = record_of(model)
    if record is None or record.stage != "converted":
        stage = stage_of(model)
        what = f"an observed model ({stage}: call fxquant.convert first)" if stage else (
            f"a {type(model).__name__} that fxquant did not quantize")
        raise SaveLoadError(
            f"fxquant.save takes a model returned by fxquant.quantize or fxquant.convert; got "
            f"{what}."
        )
    return record


def _model_info(model: nn.Module, record: QuantRecord) -> ModelInfo:
    if is_hf_model(model):
        return ModelInfo(type(model).__name__, type(model).__module__, "transformers",
                         getattr(model.config, "_attn_implementation", None))
    if record.capture == "regions":
        return ModelInfo(type(model).__name__, type(model).__module__, "module")
    return ModelInfo(record.source_class, "", "module")


def _write_hf_files(model: PreTrainedModel, folder: Path) -> None:
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    config.save_pretrained(folder)
    generation = getattr(model, "generation_config", None)
    if generation is not None and model.can_generate():
        generation.save_pretrained(folder)


def _check_target(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise SaveLoadError(f"{target} exists and is not a folder; choose another path.")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_FILE).is_file():
        raise SaveLoadError(
            f"{target} already holds files and is not an fxquant save; fxquant.save replaces "
            "only its own folders. Choose a new or empty folder."
        )


@contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A fresh folder beside ``target``; renamed to ``target`` when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            old = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.old"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save(qmodel: nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Save a model that ``fxquant.quantize`` / ``convert`` returned into ``directory``.

    Writes ``model.safetensors`` (int8 codes, scales, zero-points, biases and the float
    leftovers; a tensor shared by several layers once), ``fxquant.json`` (format version,
    QuantConfig, the record of regions and layers, versions, model class) and, for a Hugging
    Face model, its ``config.json`` and ``generation_config.json``. No pickle. Returns the folder.
    ``fxquant.load`` rebuilds the model from it without calibration (docs/save_load.md).
    """
    target = Path(directory)
    record = _converted_record(qmodel)
    _check_target(target)
    replay = replay_info(qmodel, record)
    tensors, aliases = unique_tensors(qmodel.state_dict())
    with _staging(target) as folder:
        weights = folder / WEIGHTS_FILE
        write_tensors(weights, tensors, {"format": FORMAT_NAME,
                                         "format_version": str(FORMAT_VERSION)})
        info = WeightsInfo(WEIGHTS_FILE, weights.stat().st_size, file_sha256(weights), aliases,
                           bytes_by_dtype(tensors))
        model_info = _model_info(qmodel, record)
        if is_hf_model(qmodel):  # model_info.kind == "transformers"
            _write_hf_files(qmodel, folder)
        manifest = Manifest(model_info, record, replay, info, versions())
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n",
                                            encoding="utf-8")
    return target
