# syntax=docker/dockerfile:1
# VoiceForge backend image. CPU by default; `docker build --build-arg DEVICE=cuda .` builds on NVIDIA's CUDA
# runtime image instead (run it with `--gpus all`). Either way the install is scripts/install.sh, the same
# script `make install` and CI (.ci/run -> make test) run. PyPI's torch 2.9.1 is the CUDA 12.8 build, so
# both variants hold the same packages; the CUDA one adds a base where NVIDIA's container toolkit is expected.
ARG DEVICE=cpu
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04

FROM python:3.11-slim AS base-cpu

FROM ${CUDA_IMAGE} AS base-cuda
# Ubuntu 22.04 ships Python 3.10; 3.11 (the version this project pins against) comes from its universe.
# gcc, libc6-dev and python3.11-dev: Triton builds a small C launcher (against Python.h) the first time it
# runs the fused decoding step (VOICEFORGE_CUDA_STEP=auto); without them the step falls back to PyTorch's.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3.11 python3.11-venv python3.11-dev gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility

FROM base-${DEVICE}
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/app/.venv/bin:$PATH \
    FLASK_APP=voiceforge \
    VOICEFORGE_INSTANCE_PATH=/data \
    VOICEFORGE_DATA_DIR=/data/voices \
    HF_HOME=/models/huggingface \
    XDG_RUNTIME_DIR=/tmp
# XDG_RUNTIME_DIR: gunicorn's control socket then lives in the container, not in the home directory
# /data, a volume that several containers may share (each would take the others' socket over).
WORKDIR /app

# The dependencies first, so a code change does not reinstall PyTorch (a layer of several GB).
COPY requirements.txt requirements-dev.txt ./
COPY scripts/install.sh scripts/install.sh
RUN PYTHON=python3.11 VENV=/app/.venv bash scripts/install.sh

COPY . .
# An unprivileged user owning the data and model directories (volumes mounted there start from these).
# The model directory must be writable: coqui-tts rewrites the official model.pth on its first load.
RUN useradd --system --uid 10001 --home-dir /data --no-create-home voiceforge \
 && mkdir -p /data/voices /models \
 && chown -R voiceforge /data /models
USER voiceforge
VOLUME ["/data", "/models"]
EXPOSE 8000

# Liveness: the process answers. Readiness (database and model) is /readyz, for a load balancer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# Migrate, then serve. gunicorn's SIGTERM handling gives in-flight requests VOICEFORGE_GRACEFUL_TIMEOUT
# (30 s) to finish: give `docker stop` more than that (compose.yaml: stop_grace_period).
CMD ["sh", "-c", "flask db upgrade && exec gunicorn -c gunicorn.conf.py wsgi:app"]
