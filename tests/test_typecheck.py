"""The package passes mypy with the project's configuration (pyproject.toml, ``[tool.mypy]``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_fxquant_passes_mypy():
    # `python -m mypy` runs the mypy installed next to the interpreter (the `test` extra pins it);
    # the files to check come from pyproject.toml.
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
