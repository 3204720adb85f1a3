"""The package, its tests and its benchmarks pass the project's ruff rules (pyproject.toml: broad
rule set, mccabe 10; docstring rules for the package only)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("folder", ["fxquant", "tests", "benchmarks"])
def test_passes_ruff(folder):
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run([ruff, "check", folder], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
