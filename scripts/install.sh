#!/usr/bin/env bash
# The one install: a virtual environment with the pinned requirements. `make install` (so `make run`,
# `make test` and CI's .ci/run) and the Dockerfile all run this script, so CI proves the image's install.
#   scripts/install.sh          runtime requirements (requirements.txt)
#   scripts/install.sh --dev    plus the test and lint tools (requirements-dev.txt)
# PYTHON (default python3.11) makes the environment at VENV (default .venv) unless one is there already.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
# No wheel cache: torch's CUDA build and its nvidia-* wheels are ~4 GB of downloads that a cache would
# keep beside the ~8 GB they install to, and a fresh machine (CI, a Docker build) never reads it again.
export PIP_NO_CACHE_DIR=1
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch and torchaudio first, on their own: pip keeps every downloaded wheel until its whole install
# ends, so this caps the disk it needs at about 10.5 GB instead of 13 (measured with df).
grep -E '^torch(audio)?==' requirements.txt | xargs "$VENV/bin/python" -m pip install --quiet
"$VENV/bin/python" -m pip install --quiet -r requirements.txt
if [ "${1:-}" = "--dev" ]; then
  "$VENV/bin/python" -m pip install --quiet -r requirements-dev.txt
fi
