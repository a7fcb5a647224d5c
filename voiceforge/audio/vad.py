"""Find the speech in a mono recording with Silero VAD's TorchScript model, on the CPU."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import Any

import av
import numpy as np

log = logging.getLogger(__name__)

VAD_RATE = 16000  # Silero VAD's native rate (it takes 8 kHz or 16 kHz)
_THRESHOLD = 0.5  # Silero's default speech probability
_MIN_SPEECH_MS = 250  # shorter blips (a click, a cough) are not speech
# A pause this long ends a segment. Short enough to find the breaths between phrases where a clip
# can be cut; word gaps inside a phrase are shorter.
_MIN_SILENCE_MS = 100
_SPEECH_PAD_MS = 30
_CHUNK = 65536  # samples per frame handed to the resampler, so long recordings stay cheap

# The model is stateful (it carries context from one 32 ms window to the next), so each thread gets
# an instance of its own (about 2 MB, loaded in milliseconds): a long recording being measured for
# fine-tuning then never makes an enrolment wait. Importing silero_vad is what is done once.
_import_lock = threading.Lock()
_models = threading.local()


def speech_segments(samples: np.ndarray, rate: int) -> list[tuple[float, float]]:
    """The speech in a mono float32 recording as (start, end) times in seconds, in order.

    Segments are split at pauses of 100 ms or more and padded by 30 ms; blips under 250 ms are
    dropped. The recording is resampled to 16 kHz for the model; the times refer to the original.
    Takes about 1.1 s per minute of audio on one CPU thread; threads run it side by side.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    audio = resample(samples, rate, VAD_RATE)
    if audio.size == 0:
        return []
    import torch

    model, get_speech_timestamps = _load()
    with _one_torch_thread(torch), torch.inference_mode():
        stamps = get_speech_timestamps(
            torch.from_numpy(audio), model, sampling_rate=VAD_RATE, threshold=_THRESHOLD,
            min_speech_duration_ms=_MIN_SPEECH_MS, min_silence_duration_ms=_MIN_SILENCE_MS,
            speech_pad_ms=_SPEECH_PAD_MS)
    duration = np.asarray(samples).size / rate
    return [(min(stamp["start"] / VAD_RATE, duration), min(stamp["end"] / VAD_RATE, duration))
            for stamp in stamps]


def speech_seconds(samples: np.ndarray, rate: int) -> float:
    """Seconds of speech in a mono float32 recording (the total length of its speech segments)."""
    return total_seconds(speech_segments(samples, rate))


def total_seconds(segments: list[tuple[float, float]]) -> float:
    """The summed length of (start, end) segments in seconds."""
    return float(sum(end - start for start, end in segments))


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Mono float32 samples at `target_rate`, resampled (anti-aliased) by libswresample."""
    audio = np.ascontiguousarray(np.asarray(samples, dtype=np.float32).reshape(-1))
    if rate == target_rate or audio.size == 0:
        return audio
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target_rate)
    out: list[np.ndarray] = []
    for start in range(0, audio.size, _CHUNK):
        frame = av.AudioFrame.from_ndarray(audio[np.newaxis, start:start + _CHUNK], format="flt",
                                           layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        out.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
    out.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros(0, np.float32)


def _load() -> tuple[Any, Any]:
    """This thread's model and silero_vad.get_speech_timestamps, loaded on the thread's first call."""
    loaded = getattr(_models, "vad", None)
    if loaded is None:
        import torch

        with _import_lock:
            threads = torch.get_num_threads()
            try:
                from silero_vad import get_speech_timestamps, load_silero_vad

                model = load_silero_vad(onnx=False)  # the TorchScript model shipped inside the wheel
            finally:
                # Importing silero_vad calls torch.set_num_threads(1), which would slow every later
                # inference in this process (XTTS included) to one thread.
                torch.set_num_threads(threads)
        loaded = _models.vad = (model, get_speech_timestamps)
        log.debug("loaded Silero VAD for thread %s", threading.current_thread().name)
    return loaded


@contextmanager
def _one_torch_thread(torch: Any) -> Iterator[None]:
    """Run the VAD on one intra-op thread: its 32 ms windows are too small to share out, and a team of
    OpenMP workers kept by this (request) thread would slow the decoder's every step (decoding/threads.py).

    torch.set_num_threads sets this thread's OpenMP and MKL counts, which the VAD needs (an OpenMP-only
    limit such as threadpoolctl's still let Silero's TorchScript model open a two-thread region), and
    also the count every thread takes at its first torch operator, which must not stay at one: a thread
    starting meanwhile (the decoder's) would keep one thread for life. So the default goes back at once,
    set from a passing thread, whose own counts end with it.
    """
    from voiceforge.decoding.threads import on_passing_thread

    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    on_passing_thread(torch.set_num_threads, threads)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
