"""HiFiGAN over bounded, overlapping windows of GPT latents, many sequences' windows in one batch.

Stock `inference_stream` re-runs HiFiGAN over every latent so far at each chunk (quadratic in the
length). Here the cheap part of the decoder (interpolating GPT latents to decoder frames, which must
be done on one global grid or windows come out of phase) runs over a sequence's latents so far, and
the expensive HiFiGAN convolutions run only over each window's new frames plus CONTEXT_FRAMES on
each side (more when speech is slowed down, where a token spans more frames and the interpolated edge
moves further), trimmed stage by stage to what the kept audio depends on (hifigan.py); the held-back
edge is cross-faded with the next window's version of it. Windows of equal shape from different
sequences are vocoded as one batch.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from voiceforge.decoding.hifigan import TrimmedGenerator
from voiceforge.decoding.transfers import Readback

# Decoder frames of context vocoded on each side of a window (256 samples each; 8 keep the windowed
# audio within one 16-bit step of a single pass over everything) and the cross-fade between windows.
CONTEXT_FRAMES = 8
CROSSFADE_SAMPLES = 512
# Decoder frames vocoded in one HiFiGAN call. On a GPU a batch keeps the chip busy; on a CPU the
# convolutions are already compute-bound at batch 1 and a big batch only thrashes the caches.
BATCH_FRAMES = {"cuda": 32768, "cpu": 1}


@dataclass
class Window:
    """Decoder frames to vocode for one sequence, and where its new audio lies in the result."""

    owner: WindowedVocoding
    frames: torch.Tensor  # (1, channels, T)
    speaker: torch.Tensor  # (1, 512, 1)
    keep_from: int  # output samples before this belong to audio already sent
    keep_to: int  # ... and from here on are the held-back edge
    end: int  # decoder frames whose audio is final once this window is sent

    @property
    def vocoded_to(self) -> int:
        """Output samples vocoded: the new audio and the edge cross-faded into the next window."""
        return min(self.keep_to + CROSSFADE_SAMPLES, self.frames.shape[-1] * self.owner.hop)


class WindowedVocoding:
    """One sequence's vocoder windows over its latents so far: `first` tokens, then twice as many each
    time up to `window` (a small first window starts the audio early; bigger ones later cost less:
    each window re-vocodes its context frames).
    """

    def __init__(self, model: Any, speaker: torch.Tensor, speed: float, *, first: int, window: int) -> None:
        self.model = model
        self.decoder = model.hifigan_decoder
        self.hop = self.decoder.output_hop_length  # output samples per decoder frame
        self.speaker = speaker
        self.speed = speed
        self.window = window
        self.size = first  # tokens in the current window
        self.context = math.ceil(CONTEXT_FRAMES * max(1.0, 1.0 / max(speed, 0.05)))
        self.due = first  # latents in when the next window is due
        self.emitted = 0  # decoder frames whose audio has been sent (the held-back edge excluded)
        self.tail: np.ndarray | None = None  # audio just past `emitted`, to cross-fade with the next window

    def ready(self, count: int, finished: bool) -> bool:
        """Whether the next window is due with `count` latents in (or the sequence has finished)."""
        return count > 0 and (finished or count >= self.due)

    def take(self, latents: torch.Tensor, finished: bool) -> Window:
        """The next window, once ready: `latents` (T, model_dim) are the sequence's GPT latents so far."""
        self.size = min(self.size * 2, self.window)
        self.due = latents.shape[0] + self.size
        frames = decoder_frames(self.model, latents[None], self.speed)
        total = frames.shape[-1]
        end = total if finished else max(self.emitted, total - self.context)
        first = max(0, self.emitted - self.context)
        return Window(self, frames[..., first:total], self.speaker, (self.emitted - first) * self.hop,
                      (end - first) * self.hop, end)

    def finish(self, window: Window, wav: np.ndarray) -> np.ndarray:
        """The audio to send for a vocoded window (`wav` is its samples keep_from..vocoded_to): the new
        part, cross-faded with the previous tail.
        """
        kept = window.keep_to - window.keep_from
        piece = wav[:kept].copy()
        if self.tail is not None:
            fade = min(self.tail.size, piece.size)
            ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
            piece[:fade] = self.tail[:fade] * (1.0 - ramp) + piece[:fade] * ramp
        self.tail = wav[kept:].copy()
        self.emitted = window.end
        return piece


def vocode(generator: TrimmedGenerator, windows: list[Window]) -> list[tuple[list[Window], Readback]]:
    """HiFiGAN over each window, queued on the device: for each batch, its windows and their float32
    mono 24 kHz samples keep_from..vocoded_to, one row each, on their way to the host (Readback).

    Windows of equal shape and kept span share a batch, up to BATCH_FRAMES decoder frames.
    """
    groups: dict[tuple[int, ...], list[Window]] = defaultdict(list)
    for window in windows:
        groups[(*window.frames.shape, window.keep_from, window.vocoded_to)].append(window)
    budget = BATCH_FRAMES.get(windows[0].frames.device.type, 1) if windows else 1
    batches = []
    for (*shape, keep_from, vocoded_to), group in groups.items():
        size = max(1, budget // shape[-1])
        for start in range(0, len(group), size):
            batch = group[start:start + size]
            frames = torch.cat([window.frames for window in batch])
            speakers = torch.cat([window.speaker for window in batch])
            wavs = generator(frames, speakers, keep_from, vocoded_to).float().reshape(len(batch), -1)
            batches.append((batch, Readback(wavs)))
    return batches


def decoder_frames(model: Any, gpt_latents: torch.Tensor, speed: float) -> torch.Tensor:
    """GPT latents (1, T, C) -> HiFiGAN input frames, exactly as `model.inference` then HifiDecoder do."""
    decoder = model.hifigan_decoder
    length_scale = 1.0 / max(speed, 0.05)
    if length_scale != 1.0:
        gpt_latents = F.interpolate(gpt_latents.transpose(1, 2), scale_factor=length_scale,
                                    mode="linear").transpose(1, 2)
    frames = F.interpolate(gpt_latents.transpose(1, 2), mode="linear",
                           scale_factor=[decoder.ar_mel_length_compression / decoder.output_hop_length])
    if decoder.output_sample_rate != decoder.input_sample_rate:
        frames = F.interpolate(frames, scale_factor=[decoder.output_sample_rate / decoder.input_sample_rate],
                               mode="linear")
    return frames
