#!/usr/bin/env bash
# Create .venv and install MotionLab with its test extras. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned, from pip (the CUDA build also runs on CPU); never through uv/poetry
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".[test]"
# VBench pins old transformers/numpy: install it (and what its metric modules import) without dependencies.
python -m pip install -q "setuptools<81" easydict omegaconf decord==0.6.0
python -m pip install -q --no-deps vbench==0.1.5 openai-clip==1.0.1 pyiqa==0.1.16
