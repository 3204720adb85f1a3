"""``fxquant quantize MODEL_DIR --out OUT_DIR``: quantize a local Hugging Face model and save it."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config import QuantConfig
from ..errors import CalibrationError, ExportError
from .hf_folder import FloatModel, encode, model_folder, random_tokens, read_texts

EXAMPLE_LENGTH = 16


@contextmanager
def step(what: str, quiet: bool) -> Iterator[None]:
    """``fxquant: <what> ...`` then its time, on stderr."""
    start = time.perf_counter()
    if not quiet:
        print(f"fxquant: {what} ...", file=sys.stderr, flush=True)
    yield
    if not quiet:
        print(f"fxquant: {what}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def _calibration(tokenizer: Any | None, mode: str, texts: Path | None,
                 max_length: int) -> list[dict[str, Any]] | None:
    """Calibration batches (one text each), checked before any weight is loaded."""
    if mode != "static" and texts is None:
        return None
    if texts is None or tokenizer is None:
        missing = "--calibration FILE (one text per line)" if texts is None else (
            "a tokenizer in the model folder (tokenizer.json)")
        raise CalibrationError(
            f"static mode calibrates activation ranges on texts and needs {missing}; or use "
            "--mode dynamic (the default), which needs no calibration."
        )
    return [encode(tokenizer, t, max_length) for t in read_texts(texts)]


def _example(float_model: FloatModel, batches: list[dict[str, Any]] | None) -> dict[str, Any]:
    if batches:
        return batches[0]
    return random_tokens(float_model.vocab_size, 1, EXAMPLE_LENGTH, seed=0)


def _export(qmodel: Any, out: Path, example: dict[str, Any]) -> Path:
    """``input_ids -> logits`` as ONNX (no KV cache: the model runs with ``use_cache=False``)."""
    from .. import onnx_export

    path = out / "model.onnx"
    config: Any = getattr(qmodel, "config", None)  # a transformers config, or None
    use_cache = getattr(config, "use_cache", None)
    try:
        if use_cache:
            config.use_cache = False
        onnx_export.export_onnx(qmodel, path, (example["input_ids"],),
                                input_names=["input_ids"],
                                dynamic_axes={"input_ids": {1: "sequence"}})
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ExportError(
            f"the quantized model is saved in {out}, but its ONNX export failed: "
            f"{type(exc).__name__}: {first}"
        ) from None
    finally:
        if use_cache:
            config.use_cache = use_cache
    return path


def quantize_command(model_dir: Path, out: Path, mode: str, texts: Path | None, onnx: bool,
                     max_length: int, quiet: bool) -> int:
    """``fxquant quantize``: quantize a Hugging Face model folder and save it (and its ONNX
    file when asked); returns the exit status."""
    from .. import api, serialize

    config = QuantConfig(mode=mode)  # type: ignore[arg-type]
    folder = model_folder(model_dir)
    tokenizer = folder.tokenizer()
    batches = _calibration(tokenizer, mode, texts, max_length)
    with step(f"load {model_dir}", quiet):
        float_model = folder.load(tokenizer, progress=not quiet)
    example = _example(float_model, batches)
    with step(f"quantize {type(float_model.model).__name__} ({mode})", quiet):
        qmodel = api.quantize(float_model.model, example, calibration=batches, config=config,
                              progress=None if not quiet else False)
    with step(f"save {out}", quiet):
        serialize.save(qmodel, out)
        if float_model.tokenizer is not None:
            float_model.tokenizer.save_pretrained(out)
    if onnx:
        with step("export ONNX", quiet):
            path = _export(qmodel, out, example)
        if not quiet:
            print(f"fxquant: wrote {path}", file=sys.stderr)
    print(out)
    return 0
