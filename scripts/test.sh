#!/usr/bin/env bash
# Run the test suite (slow and GPU tests are marked and deselected here).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export OMP_NUM_THREADS=1
python -m pytest -m "not slow and not gpu" -q -p no:cacheprovider "$@"
