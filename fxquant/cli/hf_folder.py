"""A local Hugging Face model folder (``save_pretrained`` layout): the float model, its tokenizer,
and token inputs made from texts or at random. Every read is ``local_files_only`` (nothing is
downloaded); pickles are never opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import FormatError, SaveLoadError
from ..serialize import PICKLE_SUFFIXES


@dataclass
class FloatModel:
    """A Hugging Face model loaded in float from a folder, with its tokenizer if it has one."""
    model: nn.Module
    tokenizer: Any | None  # a transformers tokenizer, when the folder has one
    vocab_size: int


def check_folder(folder: Path) -> None:
    """A readable model folder with safetensors weights, or a one-line error."""
    if not folder.is_dir():
        raise SaveLoadError(f"{folder}: no such folder. Pass a Hugging Face model folder "
                            "(the layout save_pretrained writes).")
    if not (folder / "config.json").is_file():
        raise SaveLoadError(f"{folder} has no config.json: it is not a Hugging Face model "
                            "folder (save one with model.save_pretrained(folder)).")
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise FormatError(
            f"{folder} holds its weights only as pickles ({', '.join(pickles[:3])}); fxquant "
            "never unpickles (a pickle runs code when it is opened). Convert it to safetensors "
            "first: model.save_pretrained(folder, safe_serialization=True) where you trust it."
        )
    raise FormatError(f"{folder} has no weights (*.safetensors).")


def _model_class(folder: Path, config: Any) -> Any:
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    for mapping in (transformers.MODEL_FOR_CAUSAL_LM_MAPPING, transformers.MODEL_MAPPING):
        try:
            return mapping[type(config)]
        except KeyError:
            continue
    raise SaveLoadError(
        f"{folder}: unknown architecture {getattr(config, 'architectures', None)} "
        f"(model_type {config.model_type!r}): the installed transformers has no model class "
        "for it."
    )


def _config(folder: Path) -> Any:
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (ValueError, KeyError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SaveLoadError(f"{folder}: unknown architecture or unreadable config.json "
                            f"({first}).") from None


def _tokenizer(folder: Path) -> Any | None:
    import transformers

    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json",
                                                 "vocab.txt", "vocab.json")):
        return None
    try:
        return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError):
        return None


@dataclass
class ModelFolder:
    """A checked folder whose architecture this transformers knows (nothing loaded yet)."""

    path: Path
    config: Any
    model_class: Any

    def tokenizer(self) -> Any | None:
        return _tokenizer(self.path)

    def load(self, tokenizer: Any | None = None, progress: bool = True) -> FloatModel:
        """The model (its architecture's class, else AutoModelForCausalLM, else AutoModel), in
        eval mode, from safetensors only."""
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        if not progress:
            hf_logging.disable_progress_bar()
        try:
            model = self.model_class.from_pretrained(self.path, local_files_only=True,
                                                     use_safetensors=True)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        vocab = getattr(self.config.get_text_config(), "vocab_size", None) or 100
        return FloatModel(model.eval(), tokenizer, int(vocab))


def model_folder(folder: Path) -> ModelFolder:
    """Check ``folder`` and resolve its model class; one-line errors, before any weight loads."""
    check_folder(folder)
    config = _config(folder)
    return ModelFolder(folder, config, _model_class(folder, config))


def load_float_model(folder: Path, progress: bool = True) -> FloatModel:
    """The float model (and tokenizer) of a Hugging Face model folder."""
    found = model_folder(folder)
    return found.load(found.tokenizer(), progress)


def read_texts(path: Path) -> list[str]:
    """One text per non-empty line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SaveLoadError(f"cannot read texts from {path}: {exc}") from None
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise SaveLoadError(f"{path} holds no text (one text per line).")
    return texts


def encode(tokenizer: Any, text: str, max_length: int) -> dict[str, torch.Tensor]:
    """One text as a batch of one: ``input_ids`` and ``attention_mask``."""
    enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def random_tokens(vocab_size: int, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """A seeded batch of random token ids (and a full attention mask)."""
    ids = torch.randint(0, vocab_size, (batch, length),
                        generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
