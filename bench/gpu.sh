#!/usr/bin/env bash
# Every GPU check of the decoding engine in one command, for a lent GPU machine (at most 10 minutes a
# command there, 15 minutes of device time a session): the CUDA tests, then the benchmarks, each
# capped so a slow one cannot eat the others' time. The default steps fit one 600 s command: about
# 20 s of installing, then 120 + 60 + 130 + 260 s at most (an H200 took 56, 22, 74 and 108 s with
# fewer variants and tilings). Figures and logs go to $OUT (the device tool sets it; default /tmp/voiceforge-gpu).
#
# The machine has Python and PyTorch but not our other packages: carry them as wheels in .whl/
# (git-ignored; `bash bench/gpu-wheels.sh` downloads them here) and run, from the repo root:
#   bash bench/gpu.sh                   # CUDA when present
#   DEVICE=cpu SIZE=tiny MAX_TOKENS=24 bash bench/gpu.sh   # a dry run of the same steps on a CPU
# It stops at once when an import fails (a wheel missing), rather than spend minutes on failing steps.
# STEPS picks steps (default: cuda-tests,triton-step,decode; vocoder and compile are the others);
# ONLY the variants of bench/decode.py (its --only; default: the engine's (auto) in fp32; in bf16 with
# and without (sync) a step queued ahead, and with two other tilings of the fused kernels, "NAME @TILING");
# CONCURRENCY, AGREEMENT, REPEATS and VOCODER_TOKENS shrink the runs (tests/test_bench.py);
# TRITON_CONFIGS the tilings of bench/triton_step.py (TRITON_BATCHES its batch sizes), TILING the one
# decode's fused variants use
# (say, the best of those: STEPS=decode TILING=to_row_length=1); DECODE_S decode's cap in seconds;
# PHASES=1 times decode.py's phases; TEN=1 adds its 10-sentence text (stock takes about 40 s on a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/voiceforge-gpu}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-full}
MAX_TOKENS=${MAX_TOKENS:-218}  # 215 tokens per sentence (10 s of audio), as the README's H200 table
CONCURRENCY=${CONCURRENCY:-1,8,32}
AGREEMENT=${AGREEMENT:-6}
REPEATS=${REPEATS:-2}
VOCODER_TOKENS=${VOCODER_TOKENS:-96}
STEPS=${STEPS:-cuda-tests,triton-step,decode}
DECODE_S=${DECODE_S:-260}
if [ "$DEVICE" = cpu ]; then
  ONLY=${ONLY-}
else
  ONLY=${ONLY-ours+auto,ours+auto bf16 both sync,ours+auto bf16 both,ours+auto bf16 both @to_row_length=1,\
ours+auto bf16 both @attention_splits=8 block_t=32}
fi
# the defaults; attention's loop to each row's length; attention in 4 or 8 parts of each row's length
# (flash-decoding: at one row a layer's attention is 16 programs, each walking its positions block by
# block); with the loop to the row's length, half the output columns a one-row program computes (twice
# the programs: the output projection and the MLP's second, 1,024 columns, run only 128 programs of 8
# on a GPU of 132 SMs). At one row only (TRITON_BATCHES): auto runs the fused kernels for one row.
TRITON_CONFIGS=${TRITON_CONFIGS:-default to_row_length=1 attention_splits=4,block_t=64 \
attention_splits=8,block_t=32 single_row_block_n=4,to_row_length=1}
TRITON_BATCHES=${TRITON_BATCHES:-1}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ "$DEVICE" = cpu ]; then
  PY=.venv/bin/python  # the dry run: this checkout's own environment
else
  PY=python3
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit
  export PYTHONPATH=/tmp/site:$PWD
fi
{ nvidia-smi || true; "$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available())"; } \
  >"$OUT/machine.txt" 2>&1
# Everything the steps import, at once: a missing package ends the run here, in seconds.
if ! "$PY" -c "import sys; sys.path.insert(0, '.'); import flask, sqlalchemy, TTS.tts.models.xtts, \
voiceforge.services.engine, voiceforge.decoding.scheduler, voiceforge.decoding.cuda_step, \
voiceforge.decoding.triton_step, tests.support.checkpoint" \
    >"$OUT/imports.txt" 2>&1; then
  echo "imports failed (a wheel missing from bench/gpu-wheels.sh?):"
  tail -5 "$OUT/imports.txt"
  exit 1
fi

step() {  # step SECONDS NAME COMMAND...: run, log to $OUT/NAME.txt, note the status and the time taken
  local limit=$1 name=$2 started=$SECONDS
  shift 2
  [[ ",$STEPS," == *",$name,"* ]] || return 0
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  echo "$name: exit $? after $((SECONDS - started)) s" | tee -a "$OUT/steps.txt"
}

# The CUDA tests (CUDA graphs and the Triton step: tokens equal stock's; the Triton kernels against
# PyTorch's step in fp32 and bf16; bf16 GPT and vocoder speak). --noconftest: the suite's conftest
# builds the app's fixtures, which these tests do not need. -v: a cut run still names what passed.
step 120 cuda-tests "$PY" -m pytest --noconftest -v -k cuda tests/test_triton_step.py tests/test_decoding.py
# One checkpoint for the benchmarks below (building the full one takes tens of seconds), with the
# speakers bench/decode.py builds its own with.
CHECKPOINT=/tmp/voiceforge-bench-$SIZE
step 60 checkpoint "$PY" -c "import sys, pathlib; sys.path.insert(0, '.'); \
from tests.support.checkpoint import build_checkpoint; \
build_checkpoint(pathlib.Path('$CHECKPOINT'), size='$SIZE', max_audio_tokens=$MAX_TOKENS, \
speakers=('Ana Florence', 'Claribel Dervla', 'Damien Black', 'Zoe Z'))"
# The step in fused Triton kernels against PyTorch's, graph replay (CUDA only).
[ "$DEVICE" = cpu ] || step 130 triton-step "$PY" bench/triton_step.py --checkpoint "$CHECKPOINT" \
  --configs "$TRITON_CONFIGS" --batches "$TRITON_BATCHES" --repeats 100
ten=--no-ten-sentences
[ -n "${TEN:-}" ] && ten=--ten-sentences
step "$DECODE_S" decode "$PY" bench/decode.py --size "$SIZE" --max-tokens "$MAX_TOKENS" --device "$DEVICE" \
  --checkpoint "$CHECKPOINT" --concurrency "$CONCURRENCY" --agreement "$AGREEMENT" --repeats "$REPEATS" \
  ${PHASES:+--phases} "$ten" ${ONLY:+--only "$ONLY"} ${TILING:+--tiling "$TILING"} \
  --json "$OUT/decode-$SIZE-$DEVICE.json"
step 60 vocoder "$PY" bench/vocoder.py --device "$DEVICE" --tokens "$VOCODER_TOKENS"
# Does compiling a layer's halves (kernel fusion) make the step, replayed from CUDA graphs as the
# engine runs it, faster? Not used by the engine.
graphs=--graphs
[ "$DEVICE" = cpu ] && graphs=  # no CUDA graphs on a CPU
step 60 compile "$PY" bench/compile_step.py --size "$SIZE" --device "$DEVICE" --batches "$CONCURRENCY" \
  --regional $graphs --repeats 5
