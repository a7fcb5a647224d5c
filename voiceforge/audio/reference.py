"""Prepare a voice reference clip: find its speech (Silero VAD), require enough, trim, peak-normalise."""

from __future__ import annotations

import numpy as np

from voiceforge.audio.vad import speech_segments, total_seconds
from voiceforge.errors import Unprocessable

_ANALYSIS_FRAME_S = 0.02  # frames for the level check below
_SILENCE_FLOOR_DBFS = -50.0  # a recording whose loudest frame is quieter than this holds no speech
_TRIM_PADDING_S = 0.1  # keep a breath of context so word onsets are not clipped
_TARGET_PEAK_DBFS = -1.0


def prepare_reference(samples: np.ndarray, rate: int, *, min_speech_seconds: float = 3.0,
                      max_seconds: float | None = None) -> np.ndarray:
    """Check there is enough speech, trim what lies around it, and peak-normalise a mono reference clip.

    Speech is what Silero VAD hears as speech, not merely sound: room noise, hum, a tone or music
    around a short take does not count (a level threshold would take any steady noise above it
    for speech). The clip is trimmed to its first and last speech plus 0.1 s, then scaled so its
    peak sits at -1 dBFS (peak rather than RMS normalisation: it can never clip, and XTTS's
    conditioning is insensitive to overall level). Raises Unprocessable (422) when the clip is
    silent or has less than `min_speech_seconds` of speech. max_seconds: where decoding cut the
    recording short, so that the refusal can say only that much was heard.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    audio = np.nan_to_num(np.asarray(samples, dtype=np.float64).reshape(-1))
    if audio.size:
        audio -= audio.mean()  # a DC offset would otherwise read as a constant level
    # A recording cut at max_seconds may have its speech after the cut: every refusal says so then.
    cut = ""
    if max_seconds is not None and audio.size / rate >= max_seconds - 0.05:
        cut = f" Only its first {max_seconds:.0f} s are read; put the speech there."
    loudest = _loudest_dbfs(audio, max(1, round(_ANALYSIS_FRAME_S * rate)))
    if loudest < _SILENCE_FLOOR_DBFS:
        level = f"{loudest:.0f} dBFS" if np.isfinite(loudest) else "digital silence"
        raise Unprocessable(f"No speech found: the recording is silent or nearly so ({level}).{cut}")
    segments = speech_segments(audio.astype(np.float32), rate)
    speech_seconds = total_seconds(segments)
    if speech_seconds < min_speech_seconds:
        found = (f"only {speech_seconds:.1f} s of speech" if segments
                 else "no speech (only noise, hum or tones)")
        raise Unprocessable(f"The recording has {found}; at least {min_speech_seconds:.1f} s are "
                            f"needed.{cut}")
    padding = round(_TRIM_PADDING_S * rate)
    start = max(0, round(segments[0][0] * rate) - padding)
    end = min(audio.size, round(segments[-1][1] * rate) + padding)
    return _normalise_peak(audio[start:end])


def _loudest_dbfs(audio: np.ndarray, frame_len: int) -> float:
    """RMS level of the loudest analysis frame in dBFS (-inf for digital silence or no audio)."""
    if audio.size == 0:
        return -np.inf
    frames = -(-audio.size // frame_len)
    padded = np.zeros(frames * frame_len)
    padded[: audio.size] = audio
    rms = float(np.sqrt(np.mean(padded.reshape(frames, frame_len) ** 2, axis=1)).max())
    with np.errstate(divide="ignore"):
        return float(20.0 * np.log10(rms))


def _normalise_peak(audio: np.ndarray) -> np.ndarray:
    peak = float(np.max(np.abs(audio)))
    gain = 10.0 ** (_TARGET_PEAK_DBFS / 20.0) / peak
    return np.clip(audio * gain, -1.0, 1.0).astype(np.float32)
