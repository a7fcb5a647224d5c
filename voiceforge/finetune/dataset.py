"""Turn a voice's recordings into a coqui-tts fine-tuning dataset: 2-11 s transcribed WAV clips."""

from __future__ import annotations

import csv
import logging
import os
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from voiceforge.audio.decode import decode_audio
from voiceforge.audio.vad import speech_segments, total_seconds
from voiceforge.errors import Unprocessable, UnsupportedMedia
from voiceforge.finetune.asr import ASR_MODEL_ENV

log = logging.getLogger(__name__)

SAMPLE_RATE = 22050  # what XTTS-v2's GPT and DVAE are trained on
MIN_CLIP_SECONDS = 2.0  # shorter clips teach little and coqui's recipe drops them
MAX_CLIP_SECONDS = 11.0  # under the trainer's max_wav_length of 255995 samples (11.6 s)
EVAL_FRACTION = 0.15
DEFAULT_MAX_SECONDS = 600.0  # of audio decoded per recording
TRAIN_METADATA = "metadata_train.csv"
EVAL_METADATA = "metadata_eval.csv"
WAVS_DIR = "wavs"
MIN_SPEECH_SETTING = "VOICEFORGE_FINETUNE_MIN_SPEECH_SECONDS"
_HEADER = ("audio_file", "text", "speaker_name")  # what coqui's "coqui" formatter reads
# Silence kept on each side of a stretch of speech: longer pauses inside a clip are shortened to
# twice this, so a clip is mostly speech and a long breath does not eat its 11 s.
_PAUSE_KEEP_S = 0.3
_QUIET_FRAME_S = 0.02  # resolution at which an over-long stretch of speech is searched for a cut
_JOIN_FADE_S = 0.005  # where a shortened pause joins two pieces, fade so the join does not click


class Transcribes(Protocol):
    """What the dataset needs of speech recognition; voiceforge.finetune.asr.Transcriber is one."""

    def transcribe(self, samples: np.ndarray, rate: int, language: str | None = None) -> str: ...


@dataclass(frozen=True)
class Recording:
    """One upload: the main recording or an extra sample, with its transcript if the user gave one."""

    audio: bytes
    text: str | None = None


@dataclass(frozen=True)
class Clip:
    """One dataset clip: a 22.05 kHz mono 16-bit WAV and its transcript."""

    path: Path
    text: str
    seconds: float


@dataclass(frozen=True)
class Dataset:
    """A dataset on disk: clips under root/wavs and coqui "coqui"-format train/eval metadata."""

    root: Path
    train_csv: Path
    eval_csv: Path
    clips: list[Clip]
    speech_seconds: float  # speech the VAD found in all recordings, clipped or not
    language: str


@dataclass
class _Planned:
    """A recording decoded and cut into clips, before any transcription."""

    number: int  # 1-based, in the order the recordings were given
    text: str | None
    speech_seconds: float
    clips: list[np.ndarray]  # int16 at SAMPLE_RATE: half the memory of float32 and what is written
    # All its speech makes one clip, so one text can describe it. Not the same as len(clips) == 1:
    # a second, short clip may have been dropped, and the text would then describe missing audio.
    fits_one_clip: bool


def measure_speech(recordings: Sequence[Recording], *, max_seconds: float = DEFAULT_MAX_SECONDS,
                   first_number: int = 1) -> float:
    """Seconds of speech in all recordings: decode and VAD only, nothing written.

    Raises UnsupportedMedia (415), naming the recording (numbered from `first_number`), for one that
    cannot be decoded.
    """
    total = 0.0
    for number, recording in enumerate(recordings, first_number):
        samples = _decode(number, recording, max_seconds)
        total += total_seconds(speech_segments(samples, SAMPLE_RATE))
    return total


def check_enough_speech(seconds: float, minimum: float) -> None:
    """Raise Unprocessable (422), with the measured figure, when `seconds` is under `minimum`."""
    if seconds < minimum:
        raise Unprocessable(
            f"The recordings hold {seconds:.1f} s of speech; fine-tuning needs at least {minimum:g} s "
            f"({MIN_SPEECH_SETTING}).",
            extra={"speech_seconds": round(seconds, 1), "minimum_speech_seconds": minimum})


def build_dataset(recordings: Sequence[Recording], root: Path | str, *, language: str,
                  transcriber: Transcribes | None = None, max_seconds: float = DEFAULT_MAX_SECONDS,
                  speaker: str = "speaker", between: Callable[[], None] | None = None) -> Dataset:
    """Cut the recordings into 2-11 s clips at pauses, transcribe them, and write the dataset.

    Each recording is decoded to 22.05 kHz mono (at most `max_seconds` of it) and its speech found
    with the VAD. Adjacent stretches of speech are merged into clips while the clip stays within
    11 s (pauses over 0.6 s are shortened); a stretch longer than 11 s is split at its quietest
    point; clips under 2 s are dropped. A recording's own text is used when all its speech fits
    one clip; otherwise each clip is transcribed by `transcriber`. Without one, a recording
    without text or with more speech than one clip raises Unprocessable (422) saying how to fix
    it, before anything is written; one that cannot be decoded raises UnsupportedMedia (415).
    Writes root/wavs/*.wav, root/metadata_train.csv and root/metadata_eval.csv (about 15% of the
    clips, at least one, spread evenly). `root` should be new or empty. Recordings are numbered
    from 1 in messages, in the order given. `between` is called before each recording is cut and
    before its clips are written: a job's heartbeat, which stops the work (raising) when it is cancelled.
    """
    if not recordings:
        raise Unprocessable("No recordings were given.")
    between = between or (lambda: None)
    planned = []
    for number, recording in enumerate(recordings, 1):
        between()
        planned.append(_plan(number, recording, max_seconds))
    speech = sum(plan.speech_seconds for plan in planned)
    if speech == 0:
        raise Unprocessable("No speech found in the recordings: they are silent or hold only noise.")
    if transcriber is None:
        _require_transcripts(planned)
    root = Path(root)
    (root / WAVS_DIR).mkdir(parents=True, exist_ok=True)
    clips = []
    for plan in planned:
        between()
        clips += _write_clips(plan, root, transcriber, language)
    if len(clips) < 2:
        raise Unprocessable(
            f"Too little usable speech: the recordings hold {speech:.1f} s of speech, which gave "
            f"{len(clips)} clip(s) of {MIN_CLIP_SECONDS:g}-{MAX_CLIP_SECONDS:g} s with a transcript; "
            "fine-tuning needs at least 2. Add longer recordings of continuous speech.")
    evaluation = _eval_indices(len(clips))
    train_csv, eval_csv = root / TRAIN_METADATA, root / EVAL_METADATA
    _write_metadata(train_csv, root, [c for i, c in enumerate(clips) if i not in evaluation], speaker)
    _write_metadata(eval_csv, root, [c for i, c in enumerate(clips) if i in evaluation], speaker)
    log.info("dataset in %s: %d clips (%d for evaluation), %.1f s of clips from %.1f s of speech "
             "in %d recording(s)", root, len(clips), len(evaluation), sum(c.seconds for c in clips),
             speech, len(recordings))
    return Dataset(root=root, train_csv=train_csv, eval_csv=eval_csv, clips=clips,
                   speech_seconds=speech, language=language)


# -- cutting -----------------------------------------------------------------------------------


def _decode(number: int, recording: Recording, max_seconds: float) -> np.ndarray:
    try:
        return decode_audio(recording.audio, target_rate=SAMPLE_RATE, max_seconds=max_seconds)
    except UnsupportedMedia as exc:  # say which of several uploads is at fault
        raise UnsupportedMedia(f"Recording {number}: {exc.detail}", extra=exc.extra) from exc


def _plan(number: int, recording: Recording, max_seconds: float) -> _Planned:
    samples = _decode(number, recording, max_seconds)
    segments = speech_segments(samples, SAMPLE_RATE)
    groups = _group(samples, SAMPLE_RATE, segments)
    spans = _long_enough(groups, SAMPLE_RATE)
    clips = [_pcm16(np.concatenate(_faded_pieces(samples, clip, SAMPLE_RATE))) for clip in spans]
    text = " ".join((recording.text or "").split()) or None
    speech = total_seconds(segments)
    log.debug("recording %d: %.1f s of speech in %d segment(s) -> %d clip(s)", number, speech,
              len(segments), len(clips))
    if speech and not clips:
        log.info("recording %d: %.1f s of speech, too little for a clip of %g s; skipped", number,
                 speech, MIN_CLIP_SECONDS)
    return _Planned(number=number, text=text, speech_seconds=speech, clips=clips,
                    fits_one_clip=len(groups) <= 1)


def cut_clips(samples: np.ndarray, rate: int,
              segments: Sequence[tuple[float, float]]) -> list[list[tuple[int, int]]]:
    """Group speech segments (seconds) into clips of 2-11 s, each a list of (start, end) sample spans.

    Each segment keeps up to 0.3 s of the silence around it (so pauses in a clip last at most
    0.6 s); a segment over 11 s is split at its quietest 20 ms; neighbours are merged while the
    clip's total stays within 11 s; clips under 2 s are dropped. A clip's audio is its spans
    joined in order.
    """
    return _long_enough(_group(samples, rate, segments), rate)


def _group(samples: np.ndarray, rate: int,
           segments: Sequence[tuple[float, float]]) -> list[list[tuple[int, int]]]:
    spans = _padded_spans(segments, len(samples), rate)
    pieces = [piece for span in spans for piece in _split_long(samples, span, rate)]
    longest = round(MAX_CLIP_SECONDS * rate)
    clips: list[list[tuple[int, int]]] = []
    length = 0
    for piece in pieces:
        size = piece[1] - piece[0]
        if clips and length + size <= longest:
            clips[-1].append(piece)
            length += size
        else:
            clips.append([piece])
            length = size
    return clips


def _long_enough(clips: list[list[tuple[int, int]]], rate: int) -> list[list[tuple[int, int]]]:
    shortest = round(MIN_CLIP_SECONDS * rate)
    return [clip for clip in clips if sum(end - start for start, end in clip) >= shortest]


def _padded_spans(segments: Sequence[tuple[float, float]], total: int,
                  rate: int) -> list[tuple[int, int]]:
    """Segments in samples, each widened into the silence around it by up to _PAUSE_KEEP_S but
    never past the middle of the pause to its neighbour, so spans never overlap."""
    raw = [(max(0, round(start * rate)), min(total, round(end * rate))) for start, end in segments]
    raw = [(start, end) for start, end in raw if end > start]
    keep = round(_PAUSE_KEEP_S * rate)
    spans = []
    for index, (start, end) in enumerate(raw):
        low = (raw[index - 1][1] + start) // 2 if index else 0
        high = (end + raw[index + 1][0]) // 2 if index + 1 < len(raw) else total
        spans.append((max(low, start - keep), min(high, end + keep)))
    return spans


def _split_long(samples: np.ndarray, span: tuple[int, int], rate: int) -> list[tuple[int, int]]:
    """Split a span over 11 s at its quietest 20 ms, leaving at least 2 s on each side; repeat.

    The frame energies are computed once per span, so even a ten-minute drone costs one pass.
    """
    start, end = span
    longest, shortest = round(MAX_CLIP_SECONDS * rate), round(MIN_CLIP_SECONDS * rate)
    if end - start <= longest:
        return [span]
    frame = max(1, round(_QUIET_FRAME_S * rate))
    count = (end - start) // frame
    window = samples[start:start + count * frame].astype(np.float64)
    energy = np.mean(window.reshape(count, frame) ** 2, axis=1)

    def split(low: int, high: int) -> list[tuple[int, int]]:  # offsets from `start`
        if high - low <= longest:
            return [(start + low, start + high)]
        first = -(-(low + shortest) // frame)  # frames whose centre leaves >= 2 s on each side
        last = (high - shortest) // frame - 1
        cut = (first + int(np.argmin(energy[first:last + 1]))) * frame + frame // 2
        return split(low, cut) + split(cut, high)

    return split(0, end - start)


def _faded_pieces(samples: np.ndarray, clip: list[tuple[int, int]], rate: int) -> list[np.ndarray]:
    """The clip's spans as arrays, faded in and out where a shortened pause joins two of them."""
    fade = max(1, round(_JOIN_FADE_S * rate))
    pieces = [samples[start:end].astype(np.float32) for start, end in clip]
    for index in range(1, len(clip)):
        if clip[index - 1][1] == clip[index][0]:
            continue  # contiguous: the original audio runs on
        before, after = pieces[index - 1], pieces[index]
        n = min(fade, before.size, after.size)
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        before[before.size - n:] *= ramp[::-1]
        after[:n] *= ramp
    return pieces


def _pcm16(samples: np.ndarray) -> np.ndarray:
    return np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


# -- transcripts -------------------------------------------------------------------------------


def _require_transcripts(planned: list[_Planned]) -> None:
    """Without ASR every recording with clips needs its text and must fit one clip: say which don't."""
    untitled = [plan.number for plan in planned if plan.clips and plan.text is None]
    too_long = [plan for plan in planned if not plan.fits_one_clip and plan.text is not None]
    if not untitled and not too_long:
        return
    problems = []
    if untitled:
        problems.append(f"{_numbers(untitled)} {'has' if len(untitled) == 1 else 'have'} no text")
    for plan in too_long:
        problems.append(f"recording {plan.number} holds {plan.speech_seconds:.1f} s of speech, more than "
                        f"one text can cover ({MAX_CLIP_SECONDS:g} s at most)")
    detail = (f"Cannot transcribe the recordings: {'; '.join(problems)}. Give each sample its `text` and "
              f"keep it under {MAX_CLIP_SECONDS:g} s of speech, or set {ASR_MODEL_ENV} so the server can "
              "transcribe longer recordings.")
    raise Unprocessable(detail, extra={"recordings": sorted({*untitled, *(p.number for p in too_long)})})


def _numbers(numbers: list[int]) -> str:
    if len(numbers) == 1:
        return f"recording {numbers[0]}"
    return "recordings " + ", ".join(map(str, numbers[:-1])) + f" and {numbers[-1]}"


def _write_clips(plan: _Planned, root: Path, transcriber: Transcribes | None,
                 language: str) -> list[Clip]:
    """Write the recording's clips that have a transcript; return them in order."""
    clips = []
    for index, audio in enumerate(plan.clips, 1):
        if plan.fits_one_clip and plan.text is not None:
            text = plan.text  # the user's own transcript beats any recogniser's
        elif transcriber is not None:
            if index == 1 and plan.text is not None:
                log.info("recording %d holds %.1f s of speech, more than its text can cover: "
                         "transcribing its %d clips instead", plan.number, plan.speech_seconds,
                         len(plan.clips))
            text = _clean(transcriber.transcribe(audio.astype(np.float32) / 32768.0, SAMPLE_RATE,
                                                 language))
        else:  # _require_transcripts has ruled this out
            raise AssertionError("a clip without a transcript and no transcriber")
        if not text:
            log.info("recording %d clip %d: no speech recognised; clip dropped", plan.number, index)
            continue
        path = root / WAVS_DIR / f"rec{plan.number:03d}_{index:04d}.wav"
        _write_wav(path, audio)
        clips.append(Clip(path=path, text=text, seconds=audio.size / SAMPLE_RATE))
    return clips


def _clean(text: str) -> str:
    # "|" is the metadata's delimiter; line breaks would split a row.
    return " ".join(text.replace("|", " ").split())


# -- files -------------------------------------------------------------------------------------


def _write_wav(path: Path, audio: np.ndarray) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(audio.astype("<i2").tobytes())


def _eval_indices(count: int) -> set[int]:
    """About EVAL_FRACTION of `count` clips, at least one and never all, spread evenly: the same
    recordings give the same split, and evaluation sees every part of them."""
    evaluation = min(count - 1, max(1, round(count * EVAL_FRACTION)))
    return {int((k + 0.5) * count / evaluation) for k in range(evaluation)}


def _write_metadata(path: Path, root: Path, clips: list[Clip], speaker: str) -> None:
    """Write coqui's "coqui" metadata (pipe-separated, header row, paths relative to root).

    csv quotes a text that needs it (one starting with a quote mark, say), and the formatter's
    csv.DictReader reads it back. Written beside and renamed, so a reader never sees half a file.
    """
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="|", lineterminator="\n")
        writer.writerow(_HEADER)
        for clip in clips:
            writer.writerow((clip.path.relative_to(root).as_posix(), _clean(clip.text),
                             _clean(speaker) or "speaker"))
    os.replace(partial, path)
