"""Progress on long stages: a tqdm bar on a terminal, log lines elsewhere, nothing when asked.

tqdm is optional (the ecosystem's standard bar); without it, or when stderr is not a terminal,
fxquant logs every few seconds through the ``fxquant`` logger instead.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("fxquant")
_LOG_EVERY_S = 5.0


def _terminal() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def progress_bar(items: Iterable[T], desc: str, enabled: bool | None) -> Iterator[T]:
    """Iterate ``items`` showing progress. ``enabled``: None = a bar when stderr is a terminal
    (log lines otherwise), False = silent, True = a bar (or log lines without tqdm)."""
    if enabled is False:
        yield from items
        return
    if enabled or _terminal():
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
            yield from tqdm(items, desc=desc, total=total, leave=False, file=sys.stderr)
            return
    start = last = time.perf_counter()
    count = 0
    for count, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if now - last > _LOG_EVERY_S:
            last = now
            log.info("%s: %d done (%.1f s)", desc, count, now - start)
    if count:
        log.info("%s: %d done in %.1f s", desc, count, time.perf_counter() - start)
