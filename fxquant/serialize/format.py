"""What a saved folder holds, and ``fxquant.json``'s schema (typed, versioned).

    <folder>/
        fxquant.json             this manifest (format version, QuantConfig, QuantRecord, ...)
        model.safetensors        every state_dict() tensor, each stored once
        config.json              Hugging Face models: model.config.save_pretrained
        generation_config.json   Hugging Face models that generate

The manifest is data (:class:`Manifest`, ``to_dict`` / ``from_dict``). A reader refuses a
``format_version`` newer than :data:`FORMAT_VERSION`; fields a newer writer adds within the same
version are ignored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, FormatError
from ..record import QuantRecord

FORMAT_NAME = "fxquant"
FORMAT_VERSION = 1
MANIFEST_FILE = "fxquant.json"
WEIGHTS_FILE = "model.safetensors"
# Files that hold (or may hold) pickles: fxquant never opens them.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


@dataclass
class RegionReplay:
    """What a region's structural replay needs besides the float skeleton and the config."""

    # SHA-256 of the region's code as CONVERT left it (before the runtime passes pack weights for
    # this machine's kernels): the replay must rebuild exactly this graph.
    converted_sha256: str
    # Static mode: each activation observer's calibrated (min, max) and batch count, in graph
    # order; lowering turns them into the scale and zero-point written into the graph.
    activation_ranges: list[tuple[float, float, int]] = field(default_factory=list)


@dataclass
class WeightsInfo:
    """The manifest's entry for the safetensors file: name, size, checksum, tied keys."""
    file: str
    size_bytes: int
    sha256: str
    # state_dict() key -> the key it is stored under: one tensor under several keys (tied
    # tables) is written once and loaded back as one tensor.
    aliases: dict[str, str] = field(default_factory=dict)
    bytes_by_dtype: dict[str, int] = field(default_factory=dict)


@dataclass
class ModelInfo:
    """The manifest's entry for the model: its class and how ``fxquant.load`` rebuilds it."""
    class_name: str
    module: str
    # "transformers": rebuilt from config.json by fxquant.load; "module": needs a float skeleton.
    kind: str
    attn_implementation: str | None = None


@dataclass
class Manifest:
    """Everything a saved folder holds besides the tensors (``manifest.json``)."""
    model: ModelInfo
    record: QuantRecord
    replay: dict[str, RegionReplay]
    weights: WeightsInfo
    versions: dict[str, str]
    format_version: int = FORMAT_VERSION
    # QuantConfig.leaf_modules as qualified class names (classes are not data): a load finds
    # them among the float model's own module classes.
    leaf_modules: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "versions": self.versions,
            "model": asdict(self.model),
            "config": self.record.config.to_dict(),
            "record": {k: v for k, v in self.record.to_dict().items() if k != "config"},
            "replay": {name: asdict(r) for name, r in self.replay.items()},
            "weights": asdict(self.weights),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Manifest:
        _check_version(data, where)
        try:
            record = QuantRecord.from_dict({**data["record"], "config": data["config"]})
            replay = {name: RegionReplay(r["converted_sha256"],
                                         [tuple(a) for a in r.get("activation_ranges", [])])
                      for name, r in data["replay"].items()}
            return cls(
                model=ModelInfo(**data["model"]), record=record, replay=replay,
                weights=WeightsInfo(**data["weights"]), versions=dict(data["versions"]),
                format_version=data["format_version"],
                leaf_modules=list(data["config"].get("leaf_modules", [])),
            )
        except ConfigError as exc:
            raise FormatError(f"{where}: its QuantConfig cannot be read ({exc}).") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(
                f"{where} is damaged or not an fxquant manifest ({type(exc).__name__}: {exc}). "
                "Save the model again with fxquant.save."
            ) from None


def _check_version(data: Any, where: str) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise FormatError(f"{where} is not an fxquant manifest (no \"format\": \"fxquant\").")
    version = data.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise FormatError(f"{where} has no valid format_version ({version!r}).")
    if version > FORMAT_VERSION:
        writer = data.get("versions", {}).get("fxquant", "a newer fxquant")
        raise FormatError(
            f"{where} is format version {version}, written by fxquant {writer}; this fxquant "
            f"reads versions up to {FORMAT_VERSION}. Upgrade fxquant to load it."
        )


def read_manifest(directory: Path) -> Manifest:
    """The manifest of a saved folder (:class:`FormatError` when absent or unreadable)."""
    path = directory / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(f"{directory} is not an fxquant save: it has no {MANIFEST_FILE}. "
                          "Save a quantized model with fxquant.save first.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path} cannot be read as JSON ({exc}); the folder is damaged. "
                          "Save the model again.") from None
    return Manifest.from_dict(data, str(path))
