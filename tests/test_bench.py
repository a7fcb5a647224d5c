"""The benchmark scripts still run through, at their smallest sizes, and print the figures they exist for.

bench/ holds the scripts behind the README's figures, and bench/gpu.sh is the one command a session
with a lent GPU runs (minutes of device time it cannot spend debugging a stale script). A script that
rots is otherwise only found when someone needs it. These runs time nothing: they check that each
script ends cleanly and prints its figures, and where a figure is a correctness one (greedy tokens
batched equal alone, ours equal stock's) that it holds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each builds a checkpoint; two start gunicorn

ROOT = Path(__file__).resolve().parent.parent

BENCHMARKS = {
    "batch_agreement": (["--size", "tiny", "--sequences", "8", "--rows", "4", "--max-tokens", "12"],
                        r"onednn: 8/8 sequences identical batched and alone"),
    "bench_tts": (["--size", "tiny", "--repeats", "1"],
                  r"HTTP overhead: -?\d+ ms per request; cached latents save -?\d+ ms per request"),
    "compile_step": (["--size", "tiny", "--batches", "2", "--repeats", "1"],
                     r"\n +2 +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+x +[\d.e+-]+ +True\n"),
    "decode": (["--size", "tiny", "--max-tokens", "12", "--concurrency", "1,2", "--agreement", "2",
                "--repeats", "1", "--only", "ours", "--phases"],
               # --phases: every phase timed, and they account for the run (under 20% outside them)
               r"ours, 2 concurrent, time by phase +(?=.*vocoder \d+%)(?=.*GPT step \d+%)"
               r".*, outside them 1?\d%\n"
               r"(.*\n)*ours: greedy sequences identical to stock +2/2"),
    "enrol": (["--size", "tiny", "--seconds", "4", "--repeats", "1"],
              r"\n +4s +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +\d+%\n"),
    "finetune": (["--size", "tiny", "--clips", "4", "--epochs", "1"], r"seconds per step \(median\): [\d.]+"),
    "newcomer": (["--size", "tiny", "--max-tokens", "12", "--rows", "3", "--sentences", "6",
                  "--repeats", "1"], r"behind it, the last row kept +[\d.]+ +[\d.]+\n"),
    # The decoder alone sleeps in the kernel under 10 times a step (a lingering team: hundreds).
    "openmp": (["--size", "tiny", "--max-tokens", "12", "--concurrency", "1,2", "--repeats", "1"],
               r"\n +2 +[\d.]+ +\d\.\d +[\d.]+ +[\d.]+ +[\d.]+x\n"),
    "step_variants": (["--size", "tiny", "--batches", "2", "--prefix", "20", "--dtypes", "float32"],
                      r"float32 fused\+sdpa +batch 2: [\d.]+ ms \(logits drift [\d.e+-]+\)"),
    "stream": (["--size", "tiny", "--max-tokens", "12", "--repeats", "1", "--formats", "wav"],
               r"\n +10 +wav +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+x\n"),
    "vocoder": (["--tokens", "8", "--repeats", "1"], r"bfloat16 +[\d.]+ ms per token"),
}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_a_benchmark_runs_and_prints_its_figures(name: str) -> None:
    arguments, figure = BENCHMARKS[name]
    result = subprocess.run([sys.executable, f"bench/{name}.py", *arguments], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(figure, result.stdout), result.stdout


def test_the_gpu_command_dry_runs_every_step_on_a_cpu(tmp_path: Path) -> None:
    """bench/gpu.sh's steps all end with status 0, and the decoding figures land in $OUT as JSON."""
    settings = {"DEVICE": "cpu", "SIZE": "tiny", "MAX_TOKENS": "12", "CONCURRENCY": "1,2", "AGREEMENT": "1",
                "REPEATS": "1", "VOCODER_TOKENS": "8", "OUT": str(tmp_path), "TEN": "1",
                "STEPS": "cuda-tests,triton-step,checkpoint,decode,vocoder,compile"}
    result = subprocess.run(["bash", "bench/gpu.sh"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **settings})
    assert result.returncode == 0, result.stderr
    steps = (tmp_path / "steps.txt").read_text().splitlines()
    names = [line.split(":")[0] for line in steps]
    assert names == ["cuda-tests", "checkpoint", "decode", "vocoder", "compile"]  # triton-step: CUDA only
    assert all(": exit 0 after" in line for line in steps), steps
    figures = json.loads((tmp_path / "decode-tiny-cpu.json").read_text())
    assert figures["ours agreement"][:2] == [1, 1]  # greedy, fp32: the one sequence equals stock's
    assert figures["stock_ms_per_token"] > 0 and figures["ours rtf@2"] > 0
