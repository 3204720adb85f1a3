"""The weights file: every ``state_dict()`` tensor once, as safetensors; read back checked.

One tensor under several keys (the int8 table GPT-2's ``wte`` and ``lm_head`` regions share) is
written once under its first key; the others are recorded as aliases and get the very same tensor
object back. Reading uses safetensors' ``pread`` backend where it has one: the tensors own their
memory (no mapping of the file stays alive) and the file is read once, without a second copy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import FormatError

_CHUNK = 1 << 24


def _identity(t: torch.Tensor) -> tuple:
    """Tensors with equal identities are the same values in the same memory."""
    if t.numel() == 0:  # empty tensors have no memory to share
        return (id(t),)
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(),
            t.dtype)


def unique_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                              dict[str, str]]:
    """(the tensors to write, aliases: key -> the key its tensor is written under).

    Tensors that merely overlap (two views of one storage) are written as separate copies.
    """
    first: dict[tuple, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    storages: set[int] = set()
    for key, t in state.items():
        t = t.detach()
        ident = _identity(t)
        if ident in first:
            aliases[key] = first[ident]
            continue
        first[ident] = key
        ptr = t.untyped_storage().data_ptr()
        shares = ptr in storages or not t.is_contiguous() or (
            t.untyped_storage().nbytes() != t.numel() * t.element_size())
        storages.add(ptr)
        tensors[key] = t.contiguous().clone() if shares else t
    return tensors, aliases


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` to a safetensors file with string ``metadata``."""
    save_file(tensors, str(path), metadata=metadata)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt", device="cpu", backend="pread")
    except TypeError:  # safetensors without the pread backend
        return safe_open(str(path), framework="pt", device="cpu")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (:class:`FormatError` when it is not a whole one)."""
    try:
        with _open(path) as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except FileNotFoundError:
        raise FormatError(f"{path} is missing; the save is incomplete. Save the model "
                          "again.") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise FormatError(
            f"{path} is not a complete safetensors file ({exc}): it is truncated or damaged. "
            "Copy it again, or save the model again."
        ) from None


def bytes_by_dtype(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    """Bytes of ``tensors`` per dtype name (``int8``, ``float32``, ...)."""
    out: dict[str, int] = {}
    for t in tensors.values():
        name = str(t.dtype).removeprefix("torch.")
        out[name] = out.get(name, 0) + t.numel() * t.element_size()
    return out
