#!/usr/bin/env bash
# Download, into .whl/ (git-ignored), the wheels bench/gpu.sh needs on a lent GPU machine: the packages
# our code imports that its image lacks (or holds in another version), for its Python 3.12. Run here,
# where PyPI is reachable, before the session's first device call; then carry .whl with every call.
# The list is what the tests and benchmarks import (checked against the image's package list in the
# device tool's KINDS.md); a missing one costs a whole device call, so keep it complete.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
  coqui-tts==0.28.0 coqpit-config==0.2.5 coqui-tts-trainer==0.4.0 transformers==5.23.0
  huggingface_hub==2.4.0 tokenizers==0.23.3 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5
  anyascii==0.3.3 ko-speech-tools==0.1.0 num2words==0.5.14 librosa==0.11.0 soxr==1.1.0
  soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 audioread==3.1.0 pooch==1.9.0 platformdirs==4.14.8
  decorator==5.3.1 torchcodec==0.17.0 Flask==3.1.3 blinker==1.9.0 itsdangerous==2.2.0
  SQLAlchemy==2.1.9 trio==0.35.0 outcome==1.3.0.post0 sniffio==1.3.1
)
mkdir -p .whl
for wheel in "${WHEELS[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$wheel"
done
du -sh .whl
