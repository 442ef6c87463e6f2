#!/usr/bin/env bash
# Create .venv and install MotionLab (with --test: also the test tools and Chromium for the browser tests).
# Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1
if [ "$WITH_TEST" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  # Debian's Chromium drives the browser tests (Playwright never downloads a browser here)
  if [ "$(id -u)" = 0 ]; then APT=apt-get; else APT="sudo apt-get"; fi
  $APT update -qq && DEBIAN_FRONTEND=noninteractive $APT install -y -qq chromium >/dev/null
fi
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned, from pip (the CUDA build also runs on CPU); never through uv/poetry
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
if [ "$WITH_TEST" = 1 ]; then python -m pip install -q -e ".[test]"; else python -m pip install -q -e .; fi
# VBench pins old transformers/numpy: install it (and what its metric modules import) without dependencies.
python -m pip install -q "setuptools<81" easydict omegaconf decord==0.6.0
python -m pip install -q --no-deps vbench==0.1.5 openai-clip==1.0.1 pyiqa==0.1.16
