"""Whose kernels run a CUDA decoder's step: PyTorch's, fused Triton ones, or Triton's for one row only.

Measured on an H200 (full size, graph replay, `bench/triton_step.py`), the fused Triton step wins at one
row and loses at more: float32 1.31 against 1.54 ms at one row, 6.5 against 3.1 ms at 8 rows; bfloat16
1.03 against 1.51 ms at one row, 1.9 against 1.7 ms at 8 and 2.4 against 1.9 ms at 32. One row is a
matrix-vector product, which Triton's kernels do as one dot product per column with layer norm
fused in; several rows go through the matrix units, where cuBLAS is better. So "auto" runs each
batch size with the kernels that were faster there; a lone request (the latency that matters most) gets
the fused step. Both steps read and write the same cache, so a batch can shrink to one row and grow again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from voiceforge.decoding.cuda_graphs import LENGTH_BUCKETS
from voiceforge.decoding.gpt import GptDecoder, StepOutput

if TYPE_CHECKING:
    from voiceforge.decoding.triton_step import Tiling, TritonStep

log = logging.getLogger(__name__)

KERNELS = ("auto", "torch", "triton")  # VOICEFORGE_CUDA_STEP's choices

StepFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], StepOutput]


def choose_step(decoder: GptDecoder, kernels: str,
                tiling: Tiling | None = None) -> tuple[StepFunction, tuple[int, ...], str]:
    """The step for `kernels` ("auto", "torch" or "triton"), the attention lengths to capture it at, and
    the kernels it really runs: "torch", "triton", or "triton-one-row" (auto). Auto falls back to
    PyTorch's kernels, with a warning, where Triton cannot build its kernels (no C compiler, a GPU it
    does not support); "triton" asked for by name fails instead. `tiling` is the fused kernels'
    (benchmarks try others; the engine uses the default)."""
    if kernels not in KERNELS:
        msg = f"unknown CUDA step kernels {kernels!r}: one of {KERNELS}"
        raise ValueError(msg)
    if kernels == "torch":
        return decoder.step, LENGTH_BUCKETS, "torch"
    try:
        fused = _built_triton_step(decoder, tiling)
    except Exception as error:
        if kernels == "triton":
            raise
        log.warning("the fused Triton step could not be built (%s: %s): decoding with PyTorch's kernels",
                    type(error).__name__, error)
        return decoder.step, LENGTH_BUCKETS, "torch"
    if kernels == "triton":
        return fused.step, (), "triton"  # it reads each row's own length: one length bucket
    # PyTorch's step needs its length buckets; the one-row graphs captured at each are the same (cheap).
    return fused_for_one_row(fused.step, decoder.step), LENGTH_BUCKETS, "triton-one-row"


def fused_for_one_row(one_row: StepFunction, several: StepFunction) -> StepFunction:
    """A step that runs `one_row` when one row steps and `several` otherwise."""

    def step(tokens: torch.Tensor, audio_positions: torch.Tensor, cache_positions: torch.Tensor,
             kv_len: int) -> StepOutput:
        run = one_row if tokens.shape[0] == 1 else several
        return run(tokens, audio_positions, cache_positions, kv_len)

    return step


def _built_triton_step(decoder: GptDecoder, tiling: Tiling | None) -> TritonStep:
    from voiceforge.decoding.triton_step import TritonStep

    fused = TritonStep(decoder, tiling)
    try:
        # One step of one row now builds the one-row kernels: a machine where Triton cannot fails here,
        # at start-up, not at a request. It writes row 0's position 0, which admitting a sequence rewrites.
        zeros = torch.zeros(1, dtype=torch.long, device=decoder.device)
        with torch.inference_mode():
            fused.step(zeros, zeros, zeros, 1)
    except Exception:
        decoder.on_refresh.remove(fused.refresh)  # nothing left copying weights for a step not used
        raise
    return fused
