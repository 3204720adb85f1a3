"""Write the file atomically: one protobuf, or the graph plus ONNX external data.

Requires: a finalized model.
Guarantees: nothing appears at the target path unless everything was written (and, for external
data, the file passed the full checker): the files are written into a temporary folder next to
the target, then moved into place with ``os.replace`` -- the data file first, the model last, so a
model file at the target never names a data file that is not there. The temporary folder is
removed in every case.
Why external data: a protobuf cannot exceed 2 GB, so larger models keep their tensors in a side
file ``<name>.data`` (``onnx.save_model(..., save_as_external_data=True)``), which ONNX Runtime
reads from the model's folder. It is chosen automatically when the tensors would not fit, and can
be forced (``external_data=True``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..errors import ExportError

PROTOBUF_LIMIT = 2**31 - 1
# Tensors above this many bytes go to external data (the graph itself needs some room too).
EXTERNAL_DATA_THRESHOLD = PROTOBUF_LIMIT - 2**26
# Tensors smaller than this stay inside the model file even with external data (shapes, scales).
_INLINE_BYTES = 1024


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers' data (what decides between one file and external data)."""
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) or t.ByteSize()
    return total


def too_large_for_one_file(model: onnx.ModelProto) -> bool:
    """True when the initializers exceed what one protobuf file can hold (external data)."""
    return tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD


def data_file_name(target: Path) -> str:
    """The external data file's name next to ``target``."""
    return f"{target.name}.data"


@dataclass(frozen=True)
class Staged:
    """The written files in their temporary folder, ready to be moved into place."""

    model: Path  # the model file, in the temporary folder
    data: Path | None  # its external data file, if any
    target: Path

    @property
    def size_bytes(self) -> int:
        return self.model.stat().st_size + (self.data.stat().st_size if self.data else 0)

    def commit(self) -> tuple[Path, Path | None]:
        """Move the files into place (data first); returns (model path, data path)."""
        data_target = None
        try:
            if self.data is not None:
                data_target = self.target.with_name(self.data.name)
                os.replace(self.data, data_target)
            os.replace(self.model, self.target)
        except OSError as exc:
            raise ExportError(f"cannot write {self.target}: {exc}") from exc
        return self.target, data_target


def _save(model: onnx.ModelProto, path: Path, external: bool) -> Path | None:
    if not external:
        path.write_bytes(model.SerializeToString())
        return None
    location = data_file_name(path)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=_INLINE_BYTES, convert_attribute=False)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the exported model fails onnx.checker: {exc}") from exc
    return path.with_name(location)


@contextlib.contextmanager
def staged(model: onnx.ModelProto, target: Path, external_data: bool | None) -> Iterator[Staged]:
    """Write ``model`` into a temporary folder next to ``target``; the caller commits.

    ``external_data`` None: only when the tensors exceed what one protobuf can hold. Writing
    external data moves the tensors out of ``model`` (it then refers to the data file)."""
    external = too_large_for_one_file(model) if external_data is None else external_data
    if not external and too_large_for_one_file(model):
        raise ExportError(
            f"{target}: the model is over 2 GB, which one protobuf cannot hold; export with "
            "external_data=True (or None, the default, which decides by size)."
        )
    folder = target.parent if str(target.parent) else Path(".")
    try:
        workdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder))
    except OSError as exc:
        raise ExportError(f"cannot write {target}: {exc}") from exc
    try:
        path = workdir / target.name
        try:
            data = _save(model, path, external)
        except OSError as exc:
            raise ExportError(f"cannot write {target}: {exc}") from exc
        yield Staged(path, data, target)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
