"""Render benchmark JSON results as Markdown tables (for docs/)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def markdown(rows: list[dict], columns: list[str] | None = None) -> str:
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    name, key = sys.argv[1], sys.argv[2]
    data = json.loads((RESULTS / f"{name}.json").read_text())
    print(markdown(data[key]))


if __name__ == "__main__":
    main()
