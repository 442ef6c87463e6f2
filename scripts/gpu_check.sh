#!/usr/bin/env bash
# The GPU checks of the serving and training paths, prepared as short device runs.
#
#   bash scripts/gpu_check.sh wheels     # here, with .venv set up: the packages the GPU image lacks -> .whl/
#   bash scripts/gpu_check.sh run        # on the GPU machine, with .whl/ copied along
#   bash scripts/gpu_check.sh train      # on the GPU machine, as a second command: 2 MoGAN iterations of the whole model
#
# `run` writes three logs under $OUT (each step has its own time limit, so one that hangs leaves the others' logs):
#   gpu_tests.log     pytest -m gpu: fast-path tolerances on CUDA (tests/trainer/test_serving_gpu.py)
#   serving_tiny.log  bench/serving.py --http on CUDA with the tiny models: latency, stage shares, batching at
#                     1/4/16 clients, in process and through the API (uvicorn + SQLite, as `motionlab serve` runs)
#   serving_full.log  bench/serving.py --scale full --bf16 --http --no-http-teacher: Wan2.1-T2V-1.3B's
#                     architecture with random weights at 81x480x832 (teacher 50 steps + CFG vs. the 3-step
#                     student, stage shares, peak memory), then the student through the API (its time outside
#                     network evaluations and VAE decoding); one request per figure and 1-2 clients, to keep
#                     the step short
#
# `train` writes train_full.log: bench/rehearsal.py with Wan2.1-T2V-1.3B's 30-block DiT (random weights) at
# 81x480x832 on one GPU, 2 MoGAN iterations (one, then a resume for the second), seconds per iteration and peak
# memory next to `motionlab plan`'s prediction for the same config. Batch 1 and a 3-chunk window: the planner says
# the paper's 12-chunk window does not fit one GPU (RAFT's and the flow encoder's graphs); it needs the H200's memory.
set -uo pipefail
cd "$(dirname "$0")/.."

gpu_env() {
  OUT=${OUT:-/tmp/gpu-check}
  mkdir -p "$OUT"
  export PYTHONUNBUFFERED=1
  export PYTHONPATH=$PWD
  if [ -f .whl/site.tar.xz ]; then
    python3 -c "import tarfile; tarfile.open('.whl/site.tar.xz').extractall('/tmp/site', filter='tar')" || exit 1
    export PYTHONPATH=/tmp/site:$PWD
  fi
  python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)" \
    || { echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False)" >&2; exit 3; }
}

case "${1:-}" in
wheels)
  # What the GPU image lacks (its package list: the device tool's KINDS.md) of the serving path (av, diffusers) and of
  # the API that --http starts (FastAPI, SQLAlchemy, Alembic, Celery and what they import), at the versions this
  # checkout is tested with. Unpacked, stripped of debug info (av's, SQLAlchemy's and wcwidth's extensions carry it:
  # 6.7 MB of the compressed size) and packed again as one xz tarball, so that with the tracked files (35 MB, the
  # tiny zoo) it stays under the 64 MiB that a device run carries.
  dists="av diffusers importlib_metadata lazy-importer fastapi starlette opentelemetry-api pydantic pydantic_core
    pydantic-settings python-dotenv python-multipart typing-inspection annotated-types annotated-doc uvicorn
    SQLAlchemy alembic Mako celery kombu billiard vine amqp click-didyoumean click-repl click-plugins prompt_toolkit
    wcwidth tzlocal"
  # shellcheck disable=SC2086
  versions=$(.venv/bin/python -c "import sys, importlib.metadata as md; \
print(' '.join(f'{d}=={md.version(d)}' for d in sys.argv[1:]))" $dists) || exit 1
  tmp=$(mktemp -d)
  # shellcheck disable=SC2086
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$tmp/wheels" $versions || exit 1
  for w in "$tmp"/wheels/*.whl; do unzip -q -o "$w" -d "$tmp/site"; done
  find "$tmp/site" -name '*.so*' -type f -exec strip --strip-debug {} +
  tar -C "$tmp/site" -cf - . | xz -9e -T0 > "$tmp/site.tar.xz"
  rm -rf .whl && mkdir .whl && mv "$tmp/site.tar.xz" .whl/
  rm -rf "$tmp"
  tracked=$(git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {print s}')
  packed=$(stat -c %s .whl/site.tar.xz)
  echo "gpu_check: .whl/site.tar.xz $packed bytes + tracked files $tracked bytes = $((packed + tracked)) of" \
    "$((64 * 1024 * 1024)) that a device run carries"
  [ $((packed + tracked)) -lt $((64 * 1024 * 1024)) ] || { echo "gpu_check: too large to carry" >&2; exit 1; }
  ;;
run)
  gpu_env
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_tests.log"
  python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', \
diffusers.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu_tests.log"
  timeout 100 python3 -m pytest -m gpu tests/trainer/test_serving_gpu.py -q -p no:cacheprovider 2>&1 \
    | tee -a "$OUT/gpu_tests.log"
  timeout 120 python3 bench/serving.py --device cuda --reps 5 --http 2>&1 | tee "$OUT/serving_tiny.log"
  timeout 360 python3 bench/serving.py --device cuda --scale full --bf16 --reps 1 --rounds 1 --concurrency 1,2 \
    --http --no-http-teacher 2>&1 | tee "$OUT/serving_full.log"
  ;;
train)
  gpu_env
  mem=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
  nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/train_full.log"
  timeout 560 python3 bench/rehearsal.py --device cuda --layers 30 --frames 81 --height 480 --width 832 --nproc 1 \
    --methods mogan --clips 2 --window-chunks 3 --gpu-mem "$((mem / 1024))" --out /tmp/rehearsal 2>&1 \
    | tee -a "$OUT/train_full.log"
  ;;
*)
  echo "usage: bash scripts/gpu_check.sh wheels|run|train" >&2
  exit 2
  ;;
esac
