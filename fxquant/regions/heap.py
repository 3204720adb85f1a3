"""Give freed heap memory back to the operating system between regions.

Why: packing a region frees its int8 codes (a few MB per layer). glibc raises its mmap threshold
after the first large free, so later tensors of that size live in the heap, and freed heap pages
stay resident: loading GPT-2 small then peaked at 2.1-2.6x its int8 bytes where the live tensors
never exceed ~1.7x. ``malloc_trim`` returns the free pages (a few ms per call).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def return_freed_memory() -> None:
    """Hand free heap pages back to the OS where the C library can (glibc); else do nothing."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
