# GPU worker image: `docker build -t motionlab .` then
# `docker run --gpus all -e MOTIONLAB_DATABASE_URL=... -e MOTIONLAB_BROKER_URL=... -v /weights:/weights motionlab`
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 MOTIONLAB_WEIGHTS_DIR=/weights
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev ffmpeg git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . /app
# The README's install, unchanged (pinned torch, MotionLab, the VBench backend): one install path to keep working.
RUN bash scripts/setup.sh
ENV PATH=/app/.venv/bin:$PATH
CMD ["motionlab", "worker", "--queues", "train,eval,infer"]
