#!/usr/bin/env bash
# Set up (if needed) and run the demo: train on digits, fake quant, PTQ, int8, ONNX, comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m fxquant.demo "$@"
