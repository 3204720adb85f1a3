"""Small text helpers the commands share."""

from __future__ import annotations


def size(n: float) -> str:
    """Bytes as ``1,234 B`` / ``12.3 MB`` (binary units)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{int(n):,} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError
