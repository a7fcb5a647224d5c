"""HiFiGAN as our decoder runs it: weight norm folded once, and windows trimmed stage by stage."""

from __future__ import annotations

import pytest
import torch
from TTS.vocoder.models.hifigan_generator import HifiganGenerator

from voiceforge.decoding.hifigan import TrimmedGenerator, strip_weight_norm
from voiceforge.services.engine import Engine


def xtts_generator() -> HifiganGenerator:
    """A random-weight generator built as XTTS-v2 builds its own (HifiDecoder), weight norm and all."""
    torch.manual_seed(0)
    return HifiganGenerator(64, 1, "1", resblock_dilation_sizes=[[1, 3, 5]] * 3,
                            resblock_kernel_sizes=[3, 7, 11], upsample_kernel_sizes=[16, 16, 4, 4],
                            upsample_initial_channel=512,
                            upsample_factors=[8, 8, 2, 2], inference_padding=0, cond_channels=512,
                            conv_pre_weight_norm=False, conv_post_weight_norm=False, conv_post_bias=False,
                            cond_in_each_up_layer=True).eval()


def test_folding_weight_norm_leaves_the_audio_unchanged(shared_engine: Engine) -> None:
    generator, folded = xtts_generator(), xtts_generator()  # the same seed: the same weights
    strip_weight_norm(folded)
    frames, speaker = torch.randn(1, 64, 20), torch.randn(1, 512, 1)
    with torch.inference_mode():
        assert torch.equal(generator(frames, g=speaker), folded(frames, g=speaker))
    assert not [m for m in folded.modules() if hasattr(m, "parametrizations")]
    loaded = shared_engine.model.hifigan_decoder.waveform_decoder  # the service's model is folded at load
    assert any(hasattr(m, "parametrizations") for m in generator.modules())
    assert not [m for m in loaded.modules() if hasattr(m, "parametrizations")]


@pytest.mark.parametrize(("frames", "keep"), [(48, (8, 40)), (32, (0, 24)), (40, (8, 40)), (97, (3, 90))])
def test_a_trimmed_window_gives_the_kept_samples_of_a_full_pass(frames: int, keep: tuple[int, int]) -> None:
    """The late stages skip the context's audio, but what is kept is what a full pass gives."""
    generator = xtts_generator()
    strip_weight_norm(generator)
    trimmed = TrimmedGenerator(generator)
    inputs, speakers = torch.randn(2, 64, frames), torch.randn(2, 512, 1)
    start, stop = keep[0] * 256, keep[1] * 256 + 100  # sample offsets need not fall on frame edges
    stop = min(stop, frames * 256)
    with torch.inference_mode():
        full = generator(inputs, g=speakers)[:, 0, start:stop]
        kept = trimmed(inputs, speakers, start, stop)
    assert kept.shape == full.shape
    assert (kept - full).abs().max() < 1e-6
    assert trimmed.margins == [17, 51, 35, 3]  # samples each stage's output keeps beyond the span


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_vocoder_answers_float32_audio_close_to_full_precision(dtype: torch.dtype) -> None:
    """VOICEFORGE_VOCODER_DTYPE: a converted copy runs; the model's own generator stays float32."""
    generator = xtts_generator()
    strip_weight_norm(generator)
    full, half = TrimmedGenerator(generator), TrimmedGenerator(generator, dtype)
    inputs, speakers = torch.randn(2, 64, 40), torch.randn(2, 512, 1)
    with torch.inference_mode():
        reference = full(inputs, speakers, 8 * 256, 32 * 256)
        audio = half(inputs, speakers, 8 * 256, 32 * 256)
    assert audio.dtype == torch.float32 and audio.shape == reference.shape
    relative_rms = ((audio - reference).pow(2).mean() / reference.pow(2).mean()).sqrt()
    assert 0 < relative_rms < 0.05  # rounded differently, not a different sound
    assert half.generator is not generator and next(generator.parameters()).dtype == torch.float32
