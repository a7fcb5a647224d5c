"""Prepare a voice reference clip: trim silence, require enough speech, peak-normalise."""

from __future__ import annotations

import numpy as np

from voiceforge.errors import Unprocessable

_ANALYSIS_FRAME_S = 0.02  # 20 ms: short enough to find word edges, long enough to average pitch
_SILENCE_FLOOR_DBFS = -50.0  # frames quieter than this are silence whatever the recording's level
_RELATIVE_THRESHOLD_DB = 35.0  # ...and so are frames this far below the loudest frame (hiss, hum)
_TRIM_PADDING_S = 0.1  # keep a breath of context so word onsets are not clipped
_TARGET_PEAK_DBFS = -1.0


def prepare_reference(samples: np.ndarray, rate: int, *,
                      min_speech_seconds: float = 3.0) -> np.ndarray:
    """Trim silence, check there is enough speech, and peak-normalise a mono reference clip.

    Frames count as speech when their RMS is above both an absolute floor (-50 dBFS) and a level
    35 dB below the loudest frame. The clip is trimmed to the first and last speech frame plus
    0.1 s, then scaled so its peak sits at -1 dBFS (peak rather than RMS normalisation: it can
    never clip, and XTTS's conditioning is insensitive to overall level). Raises Unprocessable
    (422) when the clip is silent or has less than `min_speech_seconds` of speech.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    audio = np.nan_to_num(np.asarray(samples, dtype=np.float64).reshape(-1))
    if audio.size:
        audio -= audio.mean()  # a DC offset would otherwise read as constant loud "speech"
    frame_len = max(1, round(_ANALYSIS_FRAME_S * rate))
    levels = _frame_levels_dbfs(audio, frame_len)
    loudest = float(levels.max()) if levels.size else -np.inf
    if loudest < _SILENCE_FLOOR_DBFS:
        level = f"{loudest:.0f} dBFS" if np.isfinite(loudest) else "digital silence"
        raise Unprocessable(f"No speech found: the recording is silent or nearly so ({level}).")
    speech = levels >= max(_SILENCE_FLOOR_DBFS, loudest - _RELATIVE_THRESHOLD_DB)
    speech_seconds = int(speech.sum()) * frame_len / rate
    if speech_seconds < min_speech_seconds:
        raise Unprocessable(f"The recording has only {speech_seconds:.1f} s of speech; at least "
                            f"{min_speech_seconds:.1f} s are needed.")
    trimmed = _trim(audio, speech, frame_len, rate)
    return _normalise_peak(trimmed)


def _frame_levels_dbfs(audio: np.ndarray, frame_len: int) -> np.ndarray:
    """RMS level of each analysis frame in dBFS (-inf for digital silence)."""
    frames = -(-audio.size // frame_len)
    padded = np.zeros(frames * frame_len)
    padded[: audio.size] = audio
    rms = np.sqrt(np.mean(padded.reshape(frames, frame_len) ** 2, axis=1))
    with np.errstate(divide="ignore"):
        return 20.0 * np.log10(rms)


def _trim(audio: np.ndarray, speech: np.ndarray, frame_len: int, rate: int) -> np.ndarray:
    voiced = np.flatnonzero(speech)
    padding = round(_TRIM_PADDING_S * rate)
    start = max(0, int(voiced[0]) * frame_len - padding)
    end = min(audio.size, (int(voiced[-1]) + 1) * frame_len + padding)
    return audio[start:end]


def _normalise_peak(audio: np.ndarray) -> np.ndarray:
    peak = float(np.max(np.abs(audio)))
    gain = 10.0 ** (_TARGET_PEAK_DBFS / 20.0) / peak
    return np.clip(audio * gain, -1.0, 1.0).astype(np.float32)
