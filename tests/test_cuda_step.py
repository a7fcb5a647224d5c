"""Whose kernels run the CUDA step (voiceforge/decoding/cuda_step.py): the choice and its fallback.

The kernels themselves, and "auto" switching between them over one cache, are checked in Triton's
interpreter by test_triton_step.py; the engine's use of each choice on CUDA by test_decoding.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from voiceforge.decoding.cuda_step import choose_step, fused_for_one_row
from voiceforge.decoding.gpt import GptDecoder, StepOutput


def test_one_row_steps_with_the_fused_kernels_and_more_with_pytorchs() -> None:
    calls = []

    def recorder(name: str):
        def step(tokens, audio_positions, cache_positions, kv_len) -> StepOutput:
            calls.append((name, tokens.shape[0], kv_len))
            return StepOutput(tokens, tokens)
        return step

    step = fused_for_one_row(recorder("fused"), recorder("torch"))
    for rows in (1, 2, 1, 32):
        tokens = torch.zeros(rows, dtype=torch.long)
        assert step(tokens, tokens, tokens, 7).logits is tokens
    assert calls == [("fused", 1, 7), ("torch", 2, 7), ("fused", 1, 7), ("torch", 32, 7)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where Triton cannot run its kernels")
def test_auto_falls_back_to_pytorchs_kernels_where_triton_cannot_build_them(
        checkpoint_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Here a CPU (Triton compiles for GPUs): "auto" warns and steps with PyTorch's kernels, and leaves no
    fused step behind copying weights at each refresh; "triton", asked for by name, fails."""
    from voiceforge.services.engine import load_xtts

    model, _device = load_xtts(checkpoint_dir, "cpu")
    decoder = GptDecoder(model, 2)
    with caplog.at_level(logging.WARNING, logger="voiceforge.decoding.cuda_step"):
        step, lengths, kernels = choose_step(decoder, "auto")
    assert (step, kernels) == (decoder.step, "torch") and lengths
    assert "could not be built" in caplog.text and "PyTorch's kernels" in caplog.text
    assert decoder.on_refresh == []
    with pytest.raises(RuntimeError, match="driver"):  # Triton finds no GPU driver
        choose_step(decoder, "triton")
    assert decoder.on_refresh == []
    with pytest.raises(ValueError, match="cutlass"):
        choose_step(decoder, "cutlass")
