"""The decoding step in fused Triton kernels (voiceforge/decoding/triton_step.py) against PyTorch's.

On a CPU the kernels run in Triton's interpreter (in a subprocess: the interpreter is chosen when
Triton is imported) and are compiled for GPUs without running; on CUDA, compiled, in float32 and
bf16. The engine's use of them on CUDA (tokens equal stock's) is in test_decoding.py's CUDA tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.checkpoint import build_checkpoint
from tests.support.triton_compare import compare

ROOT = Path(__file__).resolve().parent.parent


def assert_same_step(results: dict, tolerance: float) -> None:
    """Every step compared (1 row, all rows, all rows after other weights were refreshed in) is the
    same to `tolerance`, and the other weights moved the logits far more than the fused step strays
    (so a refresh that copied nothing would show)."""
    moved = results.pop("moved")
    assert moved > 5 * results["refreshed"]["logits"], (moved, results["refreshed"])
    for rows, result in results.items():
        assert result["logits"] <= tolerance * result["scale"], (rows, result)
        assert result["latents"] <= tolerance * 10, (rows, result)
        assert result["cache"] <= tolerance * 10, (rows, result)


def test_the_fused_kernels_give_the_steps_logits_and_cache_in_the_interpreter(checkpoint_dir: Path) -> None:
    """One row (a dot product per column) and several (the matrix-unit path), rows of different lengths."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "tests.support.triton_compare", str(checkpoint_dir)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(results["step"]) == {"1", "4", "refreshed", "moved"}
    assert_same_step(results["step"], 1e-5)
    assert all(result["argmax_same"] for result in results["step"].values())
    # Each kernel on inputs of a few units against float64 PyTorch: float32's rounding, no more.
    # five kernels, one row and three; default tiles, small ones, small ones with attention's loop
    # bounded by each row's length instead of the cache's, and small ones with attention in 4 parts
    assert len(results["kernels"]) == 40
    assert all(error < 1e-6 for error in results["kernels"].values()), results["kernels"]
    # "auto": the fused kernels for one row, PyTorch's for more, over one cache as rows come and go.
    switching = results["switching"]
    assert switching["kernels"] == "triton-one-row"
    assert switching["logits"] <= 1e-5 * switching["scale"] and switching["argmax_same"], switching
    assert switching["cache"] <= 1e-5, switching


def test_every_kernel_launch_compiles_for_ampere_and_hopper_gpus(checkpoint_dir: Path) -> None:
    """What the interpreter cannot show: that the GPU compiler builds each launch of a step (float32 and
    bf16; one row and four; attention's loop over the cache, over each row's length, or in parts), for A100s
    (compute capability 8.0) and H100s/H200s (9.0), with the ptxas Triton ships."""
    from tests.support.triton_compile import compile_launch, distinct, launches
    from voiceforge.decoding.triton_step import Tiling
    from voiceforge.services.engine import load_xtts

    model, _device = load_xtts(checkpoint_dir, "cpu")
    kinds = {}
    for dtype in (None, torch.bfloat16):
        for rows in (1, 4):
            for tiling in (Tiling(), Tiling(to_row_length=1), Tiling(attention_splits=8, block_t=32)):
                kinds.update(distinct(launches(model, dtype, rows, tiling)))
    # a step's four linear kernels at one row and at four, in two dtypes; attention's three ways in two;
    # the parts' combination (float32 whatever the dtype)
    assert len(kinds) == 23
    for capability in (80, 90):
        for kernel, arguments in kinds.values():
            assert compile_launch(kernel, arguments, capability)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def cuda_model(tmp_path_factory: pytest.TempPathFactory):
    from voiceforge.services.engine import load_xtts

    model, _device = load_xtts(build_checkpoint(tmp_path_factory.mktemp("triton") / "xtts"), "cuda")
    return model


@cuda
def test_on_cuda_the_fused_kernels_give_the_steps_logits_in_float32(cuda_model) -> None:
    results = compare(cuda_model, rows=8)
    assert_same_step(results, 1e-5)
    assert all(result["argmax_same"] for result in results.values())


@cuda
def test_on_cuda_the_fused_kernels_in_bfloat16_stay_near_the_bfloat16_step(cuda_model) -> None:
    assert_same_step(compare(cuda_model, dtype=torch.bfloat16, rows=8), 5e-2)
