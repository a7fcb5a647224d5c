"""The fine-tuning dataset step: VAD, cutting into 2-11 s clips, transcripts, coqui metadata."""

from __future__ import annotations

import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.support.audio import encode_audio, phrases, voice
from tests.support.whisper import build_tiny_whisper, random_model_options
from voiceforge.audio.vad import speech_segments
from voiceforge.decoding.threads import on_passing_thread
from voiceforge.errors import ServiceUnavailable, Unprocessable, UnsupportedMedia
from voiceforge.finetune.asr import Transcriber, asr_configured, whisper_language
from voiceforge.finetune.dataset import (
    MAX_CLIP_SECONDS,
    MIN_CLIP_SECONDS,
    Recording,
    build_dataset,
    check_enough_speech,
    cut_clips,
    measure_speech,
)

RATE = 22050
def wav(samples: np.ndarray) -> bytes:
    return encode_audio(samples, RATE, "wav")[0]


class CountingTranscriber:
    """Stands in for Whisper: numbers the clips it hears, with the characters metadata must escape."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int, str | None]] = []

    def transcribe(self, samples: np.ndarray, rate: int, language: str | None = None) -> str:
        self.calls.append((samples.size / rate, rate, language))
        return f'"Clip {len(self.calls)}," she said | twice.\n'


def read_back(root: Path) -> tuple[list[dict], list[dict]]:
    """The dataset as coqui's trainer reads it: load_tts_samples with the "coqui" formatter."""
    from TTS.config.shared_configs import BaseDatasetConfig
    from TTS.tts.configs.shared_configs import BaseTTSConfig
    from TTS.tts.datasets import load_tts_samples

    dataset = BaseDatasetConfig(formatter="coqui", dataset_name="voice", path=str(root),
                                meta_file_train="metadata_train.csv", meta_file_val="metadata_eval.csv",
                                language="en")
    return load_tts_samples(BaseTTSConfig(datasets=[dataset]), eval_split=True)


def wav_info(path: Path) -> tuple[int, int, int, float]:
    with wave.open(str(path), "rb") as clip:
        return (clip.getframerate(), clip.getnchannels(), clip.getsampwidth(),
                clip.getnframes() / clip.getframerate())


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Whisper converted for faster-whisper, built once for this module."""
    return build_tiny_whisper(tmp_path_factory.mktemp("whisper"))


# -- VAD ---------------------------------------------------------------------------------------


def test_vad_finds_each_phrase_and_nothing_in_silence() -> None:
    import torch

    threads = torch.get_num_threads()
    signal = phrases(0.5, 3.0, 1.0, 2.5, 1.2, 3.0, 0.5)  # three phrases between pauses
    segments = speech_segments(signal, RATE)
    assert len(segments) == 3
    for (start, end), (expected_start, expected_end) in zip(segments, [(0.5, 3.5), (4.5, 7.0), (8.2, 11.2)],
                                                            strict=True):
        assert abs(start - expected_start) < 0.35 and abs(end - expected_end) < 0.35
    assert speech_segments(np.zeros(5 * RATE, np.float32), RATE) == []
    assert speech_segments(np.zeros(0, np.float32), RATE) == []
    # Importing silero_vad sets one torch thread for the whole process; the VAD puts it back.
    assert torch.get_num_threads() == threads


def test_the_vad_runs_on_one_thread_without_taking_threads_from_others() -> None:
    """A thread that starts while speech is measured (a decoder built for a request beside an
    enrolment) keeps torch's full thread count for its life; the VAD's own thread has one."""
    import torch

    from voiceforge.audio import vad

    full = on_passing_thread(torch.get_num_threads)
    if full < 2:
        pytest.skip("torch runs one CPU thread here")
    seen = {}

    def probe(*_args: object, **_kwargs: object) -> list:  # stands in for silero's get_speech_timestamps
        seen["vad"] = torch.get_num_threads()
        seen["started meanwhile"] = on_passing_thread(torch.get_num_threads)
        return []

    def measure() -> None:
        vad._models.vad = (None, probe)  # this thread's model, as vad._load caches it
        speech_segments(phrases(0.3, 1.0, 0.3), RATE)
        seen["after"] = torch.get_num_threads()

    on_passing_thread(measure)
    assert seen == {"vad": 1, "started meanwhile": full, "after": full}


def test_vad_serves_concurrent_callers() -> None:
    signals = [phrases(0.3, 2.0 + index / 2, 0.7, 1.5, 0.3, seed=index) for index in range(4)]
    expected = [speech_segments(signal, RATE) for signal in signals]
    with ThreadPoolExecutor(4) as pool:  # a stateful model: callers must not mix their windows
        assert list(pool.map(speech_segments, signals, [RATE] * 4)) == expected


def test_a_long_vad_call_does_not_hold_up_a_short_one() -> None:
    # Ten minutes of a fine-tuning sample being measured must not make an enrolment wait for it.
    long, short = phrases(0.3, 5.0, 0.3, seed=1), phrases(0.3, 2.0, 0.3, seed=2)
    long = np.tile(long, round(600 / (long.size / RATE)))
    finished: list[str] = []
    with ThreadPoolExecutor(2) as pool:
        pool.submit(lambda: finished.append("long") if speech_segments(long, RATE) else None)
        time.sleep(0.5)  # the long call is under way
        pool.submit(lambda: finished.append("short") if speech_segments(short, RATE) else None).result()
        finished.append("short answered")
    assert finished[:2] == ["short", "short answered"], finished


# -- cutting -----------------------------------------------------------------------------------


def test_cut_clips_merges_splits_and_drops() -> None:
    samples = np.random.default_rng(0).uniform(-0.5, 0.5, 60 * RATE).astype(np.float32)
    for quiet in (22.0, 30.0):  # the quietest points of a long stretch of "speech"
        samples[round(quiet * RATE):round((quiet + 0.02) * RATE)] = 0.0

    def cut(*segments: tuple[float, float]) -> list[list[tuple[float, float]]]:
        return [[(round(start / RATE, 2), round(end / RATE, 2)) for start, end in clip]
                for clip in cut_clips(samples, RATE, segments)]

    # Merged while within 11 s, padded by 0.3 s up to half the pause; the lone 1.4 s after a full
    # clip is dropped.
    assert cut((1.0, 3.0), (3.4, 6.0), (6.5, 10.5), (12.0, 12.8)) == [[(0.7, 3.2), (3.2, 6.25), (6.25, 10.8)]]
    # Long pauses shortened to 0.6 s: the clip is 3.7 s, not 12.6 s.
    assert cut((20.0, 20.5), (30.0, 31.0), (31.5, 32.0)) == [[(19.7, 20.8), (29.7, 31.25), (31.25, 32.3)]]
    # 25.6 s without a pause: split at its quietest points, each piece 2-11 s.
    assert cut((15.0, 40.0)) == [[(14.7, 22.01)], [(22.01, 30.01)], [(30.01, 40.3)]]
    assert cut((5.0, 6.3)) == []  # 1.9 s with its padding
    assert cut() == []
    lengths = [sum(end - start for start, end in clip) / RATE
               for clip in cut_clips(samples, RATE, [(0.0, 60.0)])]  # a minute of drone
    assert all(MIN_CLIP_SECONDS <= length <= MAX_CLIP_SECONDS for length in lengths)
    assert sum(lengths) == pytest.approx(60.0)


# -- datasets ----------------------------------------------------------------------------------


def test_dataset_clips_fit_and_coqui_reads_them(tmp_path: Path) -> None:
    long = phrases(0.3, 3.0, 0.6, 2.5, 0.4, 4.0, 1.5, 14.0, 0.8, 1.0, 2.0, 5.0, 0.5, 3.5, 0.7, 6.0, 0.3,
                   seed=10)
    short = phrases(0.3, 3.5, 0.3, seed=40)
    transcriber = CountingTranscriber()
    dataset = build_dataset([Recording(wav(long)), Recording(wav(short), text=" My own  words. ")],
                            tmp_path / "ds", language="en", transcriber=transcriber)

    assert all(MIN_CLIP_SECONDS <= clip.seconds <= MAX_CLIP_SECONDS for clip in dataset.clips)
    assert len(dataset.clips) >= 5
    assert dataset.speech_seconds == pytest.approx(39.0 + 3.5, abs=2.0)
    assert dataset.language == "en"
    assert len(transcriber.calls) == len(dataset.clips) - 1  # the short recording kept its own text
    assert {rate for _, rate, _ in transcriber.calls} == {RATE}
    assert {language for _, _, language in transcriber.calls} == {"en"}
    assert dataset.clips[-1].text == "My own words."
    for clip in dataset.clips:
        assert clip.path.parent == tmp_path / "ds" / "wavs"
        rate, channels, width, seconds = wav_info(clip.path)
        assert (rate, channels, width) == (RATE, 1, 2) and seconds == pytest.approx(clip.seconds)

    train, evaluation = read_back(dataset.root)
    assert len(evaluation) == max(1, round(0.15 * len(dataset.clips)))
    assert len(train) + len(evaluation) == len(dataset.clips)
    by_path = {clip.path: clip for clip in dataset.clips}
    for sample in train + evaluation:
        clip = by_path[Path(sample["audio_file"])]
        assert sample["text"] == clip.text and sample["speaker_name"] == "speaker"
    assert '"Clip 1," she said twice.' in {sample["text"] for sample in train + evaluation}
    assert dataset.train_csv.read_text().startswith("audio_file|text|speaker_name\n")


def test_texts_that_fit_one_clip_need_no_asr(tmp_path: Path) -> None:
    recordings = [Recording(wav(phrases(0.4, 4.0, 0.3, 3.0, 0.4, seed=1)), text="The first sample."),
                  Recording(wav(phrases(0.2, 5.5, 0.3, seed=2)), text="And the second one.")]
    dataset = build_dataset(recordings, tmp_path, language="de")
    assert [clip.text for clip in dataset.clips] == ["The first sample.", "And the second one."]
    train, evaluation = read_back(tmp_path)
    assert len(train) == 1 and len(evaluation) == 1
    # Deterministic: the same recordings give the same clips and split.
    again = build_dataset(recordings, tmp_path / "again", language="de")
    assert [c.seconds for c in again.clips] == [c.seconds for c in dataset.clips]
    assert again.eval_csv.read_text() == dataset.eval_csv.read_text()  # paths are relative to the root


def test_without_asr_long_or_untranscribed_recordings_are_refused(tmp_path: Path) -> None:
    long = wav(phrases(0.2, 6.0, 0.8, 5.0, 0.8, 6.0, 0.2, seed=3))
    recordings = [Recording(long), Recording(wav(phrases(0.5, 4.0, 0.5, seed=4)), text="Fine."),
                  Recording(long, text="Far too much speech for one line."),
                  # 10.1 s and 1.8 s: the short clip would be dropped, leaving words without audio.
                  Recording(wav(phrases(0.3, 9.5, 1.0, 1.2, 0.3, seed=5)), text="Almost fits.")]
    with pytest.raises(Unprocessable) as caught:
        build_dataset(recordings, tmp_path / "ds", language="en")
    detail = caught.value.detail
    assert caught.value.status == 422
    assert "recording 1 has no text" in detail and "recording 3 holds" in detail
    assert "recording 4 holds" in detail and "recording 2" not in detail
    assert "Give each sample its `text`" in detail and "under 11 s" in detail
    assert "VOICEFORGE_ASR_MODEL" in detail
    assert caught.value.extra == {"recordings": [1, 3, 4]}
    assert not (tmp_path / "ds").exists()  # refused before anything was written


def test_too_little_speech_reports_the_figure() -> None:
    recordings = [Recording(wav(phrases(0.5, 3.0, 1.0, 2.0, 0.5, seed=5)))]
    seconds = measure_speech(recordings)
    assert 4.0 < seconds < 6.0
    with pytest.raises(Unprocessable) as caught:
        check_enough_speech(seconds, 120.0)
    assert caught.value.detail == (f"The recordings hold {seconds:.1f} s of speech; fine-tuning needs at "
                                   "least 120 s (VOICEFORGE_FINETUNE_MIN_SPEECH_SECONDS).")
    assert caught.value.extra["speech_seconds"] == round(seconds, 1)
    check_enough_speech(seconds, 4.0)


def test_an_undecodable_recording_is_named() -> None:
    with pytest.raises(UnsupportedMedia, match=r"^Recording 2: The upload is text, not audio\."):
        measure_speech([Recording(wav(np.zeros(RATE, np.float32))), Recording(b"hello, not audio")])


def test_silence_holds_no_speech(tmp_path: Path) -> None:
    silent = [Recording(wav(np.zeros(10 * RATE, np.float32)), text="Nothing.")]
    assert measure_speech(silent) == 0.0
    with pytest.raises(Unprocessable, match="No speech found"):
        build_dataset(silent, tmp_path, language="en")


# -- speech recognition ------------------------------------------------------------------------


def test_asr_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not asr_configured()
    assert Transcriber.from_environment() is None
    monkeypatch.setenv("VOICEFORGE_ASR_MODEL", " small ")
    assert asr_configured()
    transcriber = Transcriber.from_environment()
    assert transcriber is not None and transcriber.model == "small"  # nothing loaded or downloaded yet
    assert whisper_language("zh-cn") == "zh" and whisper_language("EN") == "en"


def test_missing_asr_model_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ServiceUnavailable, match="VOICEFORGE_ASR_MODEL") as caught:
        Transcriber(str(tmp_path / "no-such-model")).load()
    assert caught.value.status == 503


def test_tiny_whisper_transcribes_the_clips(tmp_path: Path, tiny_whisper: Path) -> None:
    transcriber = Transcriber(str(tiny_whisper), options=random_model_options())
    assert transcriber.transcribe(voice(3.0), RATE, "en")
    recording = phrases(0.3, 5.0, 0.6, 4.0, 0.9, 6.0, 0.5, 3.0, 0.4, seed=20)  # more than one clip
    dataset = build_dataset([Recording(wav(recording), text="Ignored: too long for one text.")],
                            tmp_path, language="en", transcriber=transcriber)
    assert len(dataset.clips) >= 2
    assert all(clip.text.strip() and clip.text != "Ignored: too long for one text." for clip in dataset.clips)
    train, evaluation = read_back(tmp_path)
    assert len(train) + len(evaluation) == len(dataset.clips)
