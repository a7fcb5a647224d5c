"""Audio uploads as users send them: data URIs, every browser format, hostile files, references."""

from __future__ import annotations

import base64
import errno
import functools
import io
import logging
import os
import struct
import time
import tracemalloc
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.audio import FORMATS, compressed_silence, data_uri, encode_audio, speech_like, voice
from voiceforge.audio import datauri
from voiceforge.audio.datauri import DataUri, parse_data_uri, wav_data_uri
from voiceforge.audio.decode import decode_audio
from voiceforge.audio.encode import encode_wav
from voiceforge.audio.reference import prepare_reference
from voiceforge.errors import (
    BadRequest,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMedia,
    VoiceForgeError,
)
from voiceforge.services import storage
from voiceforge.services.storage import write_file_atomic

RATE = 22050
MAX_BYTES = 5_000_000
CLIP_SECONDS = 4.0


@functools.cache
def encoded(fmt: str) -> tuple[bytes, str]:
    """Each format encoded once per run: 4 s of speech recorded at 16 kHz."""
    return encode_audio(voice(CLIP_SECONDS, rate=16000), 16000, fmt)


def wav_header(*, channels: int = 1, rate: int = RATE, bits: int = 16, fmt_tag: int = 1,
               payload: bytes = b"", data_size: int | None = None) -> bytes:
    """A hand-built RIFF/WAVE file whose header may lie about everything."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, (rate * block) & 0xFFFFFFFF,
                      block & 0xFFFF, bits)
    size = len(payload) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data"
    body += struct.pack("<I", size) + payload
    return b"RIFF" + struct.pack("<I", len(body) & 0xFFFFFFFF) + body


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


# --- every browser format round-trips ----------------------------------------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_round_trips_to_mono_22050(fmt: str) -> None:
    data, mime = encoded(fmt)
    upload = parse_data_uri(data_uri(data, mime), max_bytes=MAX_BYTES)
    assert upload.data == data
    assert upload.mime_type == mime.split(";")[0]

    samples = decode_audio(upload.data, target_rate=RATE, max_seconds=30)

    assert samples.dtype == np.float32 and samples.ndim == 1
    # AAC in fragmented MP4 keeps its encoder priming (about 0.1 s); the rest are near exact.
    assert samples.size / RATE == pytest.approx(CLIP_SECONDS, abs=0.15)
    assert 0.3 < float(np.max(np.abs(samples))) <= 1.0
    reference = prepare_reference(samples, RATE)
    assert reference.size / RATE == pytest.approx(CLIP_SECONDS, abs=0.2)


@pytest.mark.parametrize(("fmt", "declared"), [
    ("wav", "audio/mpeg"), ("mp3", "audio/wav"), ("webm/opus", "application/octet-stream"),
    ("m4a/aac", "video/mp4"),
])
def test_declared_mime_type_is_ignored_when_decoding(fmt: str, declared: str) -> None:
    data, _ = encoded(fmt)
    upload = parse_data_uri(data_uri(data, declared), max_bytes=MAX_BYTES)
    assert upload.mime_type == declared
    assert decode_audio(upload.data, max_seconds=30).size / RATE == pytest.approx(4.0, abs=0.15)


def test_media_recorder_uri_with_codecs_parameter() -> None:
    data, _ = encoded("webm/opus")
    upload = parse_data_uri(data_uri(data, "audio/webm;codecs=opus"), max_bytes=MAX_BYTES)
    assert upload == DataUri(mime_type="audio/webm", data=data)
    assert "data=" not in repr(upload)  # never dump the audio into logs


# What Chromium's FileReader.readAsDataURL writes for an audio+video MediaRecorder blob: the codecs
# list's comma stays as is, quoted or not, ahead of the ';base64,' that ends the header.
@pytest.mark.parametrize("declared", ["video/webm;codecs=vp8,opus", 'video/webm;codecs="vp8,opus"',
                                      "video/x-matroska;codecs=avc1,opus", "AUDIO/webm; codecs=opus"])
def test_a_codecs_list_with_a_comma_is_part_of_the_header(declared: str) -> None:
    data, _ = encoded("webm/opus")
    upload = parse_data_uri(data_uri(data, declared), max_bytes=MAX_BYTES)
    assert upload == DataUri(mime_type=declared.split(";")[0].lower(), data=data)


def test_the_base64_marker_is_found_in_any_case() -> None:
    data, _ = encoded("wav")
    uri = "data:audio/wav;BASE64," + base64.b64encode(data).decode()
    assert parse_data_uri(uri, max_bytes=MAX_BYTES).data == data


def test_decodes_to_other_rates_and_downmixes_stereo() -> None:
    stereo = np.stack([speech_like(1.0, 44100), speech_like(1.0, 44100)])
    frame_bytes = (stereo.T * 20000).astype("<i2").tobytes()
    data = wav_header(channels=2, rate=44100, payload=frame_bytes)
    samples = decode_audio(data, target_rate=24000, max_seconds=10)
    assert samples.size == pytest.approx(24000, abs=50)
    assert float(np.max(np.abs(samples))) == pytest.approx(20000 / 32768 * 0.7, rel=0.1)


# --- data URI syntax ---------------------------------------------------------------------------


@pytest.mark.parametrize(("uri", "words"), [
    ("data:audio/wav;base64", "','"),
    ("audio/wav;base64,UklGRg==", "data:"),
    ("", "data:"),
    ("data:audio/wav,UklGRg==", "base64"),
    ("data:audio/wav;charset=utf-8,hello", "base64"),
    ("data:audio/wav;base64;x=y,UklGRg==", "base64"),
    ("data:audio;base64,UklGRg==", "type/subtype"),
    ("data:audio/webm;codecs;base64,UklGRg==", "name=value"),
    ("data:audio/wav;base64,UklGR", "multiple of 4"),
    ("data:audio/wav;base64,UklG=g==", "padding"),
    ("data:audio/wav;base64,UklGRg===", "padding"),
    ("data:audio/wav;base64,Ukl*Rg==", "'*'"),
    ("data:audio/wav;base64,Ukl-Rg_=", "URL-safe"),
    ("data:audio/wav;base64,UklGRé==", "not a base64 character"),
    ("data:audio/wav;base64,%2B%2B%2B%2B", "'%'"),
    ("data:audio/wav;base64,", "no audio data"),
    ("data:audio/wav;base64, \r\n\t ", "no audio data"),
    ("data:audio/wav;base64,====", "padding"),
    ("data:" + "a" * 300 + ";base64,UklGRg==", "longer than"),
    ("data:a/" + "b" * 250 + ";base64,UklGRg==", "longer than"),  # 258 characters
    ("data:video/webm;codecs=vp8,opus,UklGRg==", "base64"),
    ("data:video/webm;codecs=vp8,opus;charset=x;UklGRg==", "base64"),
])
def test_malformed_data_uris_are_400_with_a_clear_detail(uri: str, words: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_data_uri(uri, max_bytes=MAX_BYTES)
    assert words in caught.value.detail
    assert caught.value.status == 400


@pytest.mark.parametrize("value", [None, 42, b"data:audio/wav;base64,UklGRg==", ["data:"]])
def test_non_string_data_uri_is_400(value: object) -> None:
    with pytest.raises(BadRequest):
        parse_data_uri(value, max_bytes=MAX_BYTES)  # type: ignore[arg-type]


def test_lenient_where_rfc_and_browsers_allow() -> None:
    firefox = parse_data_uri("data:audio/ogg; codecs=opus;base64,T2dnUw==", max_bytes=10)
    assert firefox == DataUri("audio/ogg", b"OggS")
    assert parse_data_uri(" DATA:Audio/WAV;BASE64,UklG\r\nRg==\n", max_bytes=10) == DataUri(
        "audio/wav", b"RIFF")
    assert parse_data_uri("data:;base64,UklGRg==", max_bytes=10).mime_type == "text/plain"


def test_oversized_payload_is_413_before_any_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_decode(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("decoded an oversized payload")

    exact = data_uri(b"\0" * 1000, "audio/wav")
    assert len(parse_data_uri(exact, max_bytes=1000).data) == 1000
    monkeypatch.setattr(datauri.base64, "b64decode", must_not_decode)
    with pytest.raises(PayloadTooLarge) as caught:
        parse_data_uri(data_uri(b"\0" * 1001, "audio/wav"), max_bytes=1000)
    assert caught.value.status == 413
    # Size is judged before syntax: a huge garbage payload is refused as too large, cheaply.
    with pytest.raises(PayloadTooLarge):
        parse_data_uri("data:audio/wav;base64," + "*" * 10_000_000, max_bytes=MAX_BYTES)


# --- not audio, or hostile audio ---------------------------------------------------------------


@pytest.mark.parametrize(("data", "words"), [
    (b"\x89PNG\r\n\x1a\n" + bytes(64) + os.urandom(2000), "PNG image"),
    (b"PK\x03\x04" + os.urandom(2000), "ZIP archive"),
    (b"%PDF-1.7\n" + os.urandom(500), "PDF"),
    (b"hello, this is a text file and not a recording\n" * 40, "text"),
    (np.random.default_rng(1).bytes(20_000), "not in a recognised audio format"),
    (b"", "empty"),
    (b"RIFF\x1a\x00\x00\x00WEBPVP8L" + os.urandom(200), "WebP image"),  # RIFF, yet not a WAV
    (b"RIFF\x00\x10\x00\x00AVI LIST" + os.urandom(200), "no audio stream"),
])
def test_non_audio_declared_as_audio_is_415(data: bytes, words: str) -> None:
    upload = parse_data_uri(data_uri(data, "audio/wav"), max_bytes=MAX_BYTES) if data else None
    with pytest.raises(UnsupportedMedia) as caught:
        decode_audio(upload.data if upload else data, max_seconds=30)
    assert words in caught.value.detail
    assert caught.value.status == 415


def test_video_without_audio_is_415_no_audio_stream() -> None:
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 32
        for index in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), index * 60, np.uint8),
                                               format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(UnsupportedMedia, match=r"^The file has no audio stream \(found: video\)"):
        decode_audio(out.getvalue(), max_seconds=30)


def media_file(container_format: str, codec: str, tracks: list[np.ndarray], rate: int = 44100,
               video: str | None = None) -> bytes:
    """A file of one or more mono audio tracks (and optionally a short video track), as cameras,
    screen recorders and OBS write them."""
    out = io.BytesIO()
    with av.open(out, "w", format=container_format) as container:
        if video:
            picture = container.add_stream(video, rate=10)
            picture.width, picture.height, picture.pix_fmt = 32, 32, "yuv420p"
        streams = [container.add_stream(codec, rate=rate, layout="mono") for _ in tracks]
        for stream in streams:
            stream.codec_context.open()  # before the first packet: that writes the header
        if video:
            for index in range(10):
                frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), index * 20, np.uint8), format="rgb24")
                container.mux(picture.encode(frame))
            container.mux(picture.encode(None))
        for stream, samples in zip(streams, tracks, strict=True):
            context = stream.codec_context
            resampler = av.AudioResampler(format=context.format, layout="mono", rate=context.sample_rate,
                                          frame_size=context.frame_size or 4096)
            frame = av.AudioFrame.from_ndarray(samples[np.newaxis].astype(np.float32), format="flt",
                                               layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
            for converted in [*resampler.resample(frame), *resampler.resample(None)]:
                container.mux(stream.encode(converted))
            container.mux(stream.encode(None))
    return out.getvalue()


@pytest.mark.parametrize(("container_format", "codec", "video"), [
    ("avi", "libmp3lame", "mpeg4"), ("mpegts", "aac", "mpeg2video"),
])
def test_camera_and_broadcast_videos_are_decoded(container_format: str, codec: str, video: str) -> None:
    data = media_file(container_format, codec, [voice(4.0, rate=44100)], video=video)
    samples = decode_audio(data, max_seconds=30)
    assert samples.size / RATE == pytest.approx(4.0, abs=0.15)
    assert prepare_reference(samples, RATE).size / RATE > 3.0


def test_stereo_whose_channels_cancel_keeps_the_louder_channel() -> None:
    speech = voice(4.0, rate=RATE)
    antiphase = np.stack([speech, -0.9 * speech], axis=1)  # one side wired in reverse polarity
    pcm = (np.clip(antiphase, -1, 1) * 32767).astype("<i2").tobytes()
    samples = decode_audio(wav_header(channels=2, payload=pcm), max_seconds=30)
    assert float(np.max(np.abs(samples))) > 0.5  # the left channel, not the near-silent average
    assert prepare_reference(samples, RATE).size / RATE > 3.0
    ordinary = np.stack([speech, 0.5 * speech], axis=1)  # a plain stereo recording is still averaged
    pcm = (ordinary * 32767).astype("<i2").tobytes()
    averaged = decode_audio(wav_header(channels=2, payload=pcm), max_seconds=30)
    assert float(np.max(np.abs(averaged))) == pytest.approx(0.75 * float(np.max(np.abs(speech))), rel=0.01)


def test_a_silent_first_track_gives_way_to_the_next_with_sound() -> None:
    speech = voice(4.0, rate=44100)
    data = media_file("matroska", "flac", [np.zeros_like(speech), speech])
    samples = decode_audio(data, max_seconds=30)
    assert float(np.max(np.abs(samples))) > 0.3  # the voice on track 2, not track 1's silence
    silent = media_file("matroska", "flac", [np.zeros_like(speech)] * 2)
    with pytest.raises(Unprocessable, match="No speech"):
        prepare_reference(decode_audio(silent, max_seconds=30), RATE)


@pytest.mark.parametrize("playlist", [
    b"ffconcat version 1.0\nfile secret.wav\n",
    b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\nsecret.wav\n#EXT-X-ENDLIST\n",
])
def test_upload_cannot_make_the_server_read_its_own_files(
        playlist: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret.wav").write_bytes(encoded("wav")[0])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsupportedMedia):
        decode_audio(playlist, max_seconds=30)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_upload_decodes_what_is_there_or_is_415(fmt: str, keep: float) -> None:
    data, _ = encoded(fmt)
    try:
        samples = decode_audio(data[: int(len(data) * keep)], max_seconds=30)
    except UnsupportedMedia:
        return
    assert samples.dtype == np.float32
    assert samples.size / RATE <= CLIP_SECONDS * keep + 0.5


def test_a_few_corrupt_packets_are_skipped_not_fatal() -> None:
    data = bytearray(encoded("mp3")[0])
    middle = len(data) // 2
    data[middle:middle + 40] = bytes(range(40))  # a burst of damage inside one frame
    samples = decode_audio(bytes(data), max_seconds=30)
    assert samples.size / RATE == pytest.approx(CLIP_SECONDS, abs=0.2)


def test_sample_rate_change_mid_stream_is_followed() -> None:
    first, _ = encode_audio(speech_like(2.0, 22050), 22050, "mp3")
    second, _ = encode_audio(speech_like(3.0, 44100), 44100, "mp3")
    samples = decode_audio(first + second, max_seconds=30)  # two files pasted together
    assert samples.size / RATE == pytest.approx(5.0, abs=0.15)


def test_wav_header_claiming_billions_of_frames_decodes_only_the_real_payload() -> None:
    data = wav_header(payload=pcm16(speech_like(1.0, RATE)), data_size=0xFFFFFFF0)
    samples = decode_audio(data, max_seconds=30)
    assert samples.size == pytest.approx(RATE, abs=10)


@pytest.mark.parametrize(("header", "words"), [
    ({"channels": 0}, "channels"),
    ({"channels": 65535}, "channels"),
    ({"rate": 1}, "sample rate"),
    ({"rate": 4_000_000_000}, "WAV file"),
    ({"rate": 0}, "WAV file"),
    ({"fmt_tag": 0x1234}, "codec"),
    ({"bits": 0}, "codec"),
])
def test_absurd_wav_headers_are_415(header: dict[str, int], words: str) -> None:
    data = wav_header(payload=bytes(40_000), **header)
    with pytest.raises(UnsupportedMedia) as caught:
        decode_audio(data, max_seconds=30)
    assert words in caught.value.detail


@pytest.mark.parametrize("channels", [3, 9, 32])
def test_many_unordered_channels_are_averaged_to_mono(channels: int) -> None:
    # FFmpeg's own downmix refuses some of these layouts; ours must not.
    mono = np.frombuffer(pcm16(speech_like(0.5, RATE)), "<i2")
    interleaved = np.repeat(mono, channels).tobytes()  # every channel carries the same signal
    samples = decode_audio(wav_header(channels=channels, payload=interleaved), max_seconds=30)
    assert samples.size == pytest.approx(RATE / 2, abs=10)
    assert float(np.max(np.abs(samples))) == pytest.approx(0.7, abs=0.01)


def test_float_wav_with_nan_and_infinity_decodes_finite() -> None:
    values = np.array([np.nan, np.inf, -np.inf, 0.5] * 2000, "<f4")
    samples = decode_audio(wav_header(fmt_tag=3, bits=32, payload=values.tobytes()),
                           max_seconds=30)
    assert samples.size == 8000 and np.all(np.isfinite(samples))


def test_an_hour_of_compressed_silence_stops_at_max_seconds(
        caplog: pytest.LogCaptureFixture) -> None:
    bomb = compressed_silence(3600)
    assert len(bomb) < 1_000_000  # about 150 bytes per second of "audio"
    caplog.set_level(logging.INFO, logger="voiceforge.audio.decode")
    tracemalloc.start()
    started = time.perf_counter()
    try:
        samples = decode_audio(bomb, max_seconds=30)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert samples.size == 30 * RATE
    assert elapsed < 3.0  # the whole hour would take far longer
    assert peak < 30 * RATE * 4 * 6  # a few copies of the kept 30 s, not of the hour (635 MB)
    assert "keeping only the first 30.0 s" in caplog.text
    with pytest.raises(Unprocessable, match="No speech"):
        prepare_reference(samples, RATE)


# --- reference preparation ---------------------------------------------------------------------


def test_silence_is_422_no_speech() -> None:
    with pytest.raises(Unprocessable, match="No speech") as caught:
        prepare_reference(np.zeros(5 * RATE, np.float32), RATE)
    assert caught.value.status == 422


def test_near_silent_hiss_and_dc_offset_are_422_no_speech() -> None:
    hiss = 10 ** (-70 / 20) * np.random.default_rng(0).standard_normal(5 * RATE)
    with pytest.raises(Unprocessable, match="No speech"):
        prepare_reference(hiss.astype(np.float32), RATE)
    with pytest.raises(Unprocessable, match="No speech"):
        prepare_reference(np.full(5 * RATE, 0.4, np.float32), RATE)


def test_too_little_speech_is_422_with_the_measured_duration() -> None:
    clip = np.concatenate([np.zeros(2 * RATE), voice(1.5, rate=RATE), np.zeros(2 * RATE)]).astype(np.float32)
    with pytest.raises(Unprocessable, match=r"only 1\.[5-7] s of speech; at least 3\.0 s are needed\.$"):
        prepare_reference(clip, RATE)
    assert prepare_reference(clip, RATE, min_speech_seconds=1.0).size > 0
    # Cut short by decoding: the refusal says only the start was heard.
    with pytest.raises(Unprocessable, match=r"Only its first 4 s are read; put the speech there\.$"):
        prepare_reference(clip[: 4 * RATE], RATE, max_seconds=4.0)
    # Silent up to the cut (the speech comes later): silent, and the same hint, not merely "silent".
    with pytest.raises(Unprocessable, match=r"silence\)\. Only its first 2 s are read; put the speech"):
        prepare_reference(clip[: 2 * RATE], RATE, max_seconds=2.0)


def noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    return 10 ** (dbfs / 20) * np.random.default_rng(seed).standard_normal(round(seconds * RATE))


@pytest.mark.parametrize("floor_dbfs", [-50, -40, -30])
def test_room_noise_is_not_speech(floor_dbfs: float) -> None:
    # A 1.5 s take in 8 s of a noisy room: the noise is loud enough for a level threshold to call it
    # speech, and not for the VAD.
    clip = noise(8.0, floor_dbfs)
    clip[3 * RATE:3 * RATE + round(1.5 * RATE)] += 0.3 * voice(1.5, rate=RATE)
    with pytest.raises(Unprocessable, match=r"only 1\.[5-8] s of speech"):
        prepare_reference(clip.astype(np.float32), RATE)
    # Allowed through, the reference keeps the speech, not the 8 s of noise around it.
    reference = prepare_reference(clip.astype(np.float32), RATE, min_speech_seconds=1.0)
    assert 1.5 <= reference.size / RATE < 2.2


@pytest.mark.parametrize("what", ["white noise", "a 1 kHz tone", "a steady hum"])
def test_noise_and_tones_are_not_speech(what: str) -> None:
    t = np.arange(8 * RATE) / RATE
    clip = {"white noise": noise(8.0, -20),
            "a 1 kHz tone": 0.3 * np.sin(2 * np.pi * 1000 * t),
            "a steady hum": speech_like(8.0, RATE)}[what]  # voiced harmonics without vowels or consonants
    with pytest.raises(Unprocessable, match=r"no speech \(only noise, hum or tones\)"):
        prepare_reference(clip.astype(np.float32), RATE)


def test_reference_is_trimmed_and_peak_normalised() -> None:
    hiss = 1e-4 * np.random.default_rng(0).standard_normal(RATE)
    speech = 0.05 * voice(4.0, rate=RATE)  # quiet
    clip = (np.concatenate([hiss, speech, hiss, hiss]) + 0.02).astype(np.float32)  # DC offset

    reference = prepare_reference(clip, RATE)

    assert reference.dtype == np.float32
    assert 4.1 < reference.size / RATE < 4.6  # the speech, the VAD's margins and 0.1 s each side
    assert float(np.max(np.abs(reference))) == pytest.approx(10 ** (-1 / 20), rel=1e-3)
    assert abs(float(reference.mean())) < 0.01


# --- output ------------------------------------------------------------------------------------


def test_encode_wav_is_mono_16_bit_and_clipped() -> None:
    samples = np.array([0.0, 0.5, -0.5, 2.0, -2.0, np.nan], np.float32)
    with wave.open(io.BytesIO(encode_wav(samples, 24000))) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24000)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    assert pcm.tolist() == [0, 16384, -16384, 32767, -32767, 0]


def test_wav_data_uri_round_trips_through_the_upload_path() -> None:
    uri = wav_data_uri(encode_wav(speech_like(2.0, 24000), 24000))
    assert uri.startswith("data:audio/wav;base64,UklGR")
    samples = decode_audio(parse_data_uri(uri, max_bytes=MAX_BYTES).data, max_seconds=30)
    assert samples.size == pytest.approx(2 * RATE, abs=10)


def test_write_file_atomic_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "reference.wav"
    target.write_bytes(b"old")
    write_file_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["reference.wav"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_write_file_atomic_leaves_no_temp_file_on_disk_full(
        failing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "reference.wav"
    target.write_bytes(b"old")

    def disk_full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, failing, disk_full)
    with pytest.raises(OSError) as caught:
        write_file_atomic(target, b"new" * 1000)
    assert caught.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["reference.wav"]


# --- properties --------------------------------------------------------------------------------

_uri_like = st.builds(
    lambda scheme, header, body: f"{scheme}{header},{body}",
    st.sampled_from(["data:", "DATA:", "data", ""]),
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from("ABCxyz019+/=-_ \n%é*"), max_size=60),
)


@given(st.one_of(st.text(max_size=200), _uri_like))
@settings(max_examples=300, deadline=None)
def test_parse_data_uri_raises_only_domain_errors(text: str) -> None:
    try:
        result = parse_data_uri(text, max_bytes=30)
    except (BadRequest, PayloadTooLarge):
        return
    assert isinstance(result, DataUri) and 0 < len(result.data) <= 30


@given(st.binary(min_size=1, max_size=3000),
       st.sampled_from(["audio/wav", "audio/webm;codecs=opus", "", "audio/mp4"]),
       st.integers(min_value=0, max_value=80))
@settings(max_examples=200, deadline=None)
def test_base64_round_trips_any_bytes(data: bytes, mime: str, wrap: int) -> None:
    uri = data_uri(data, mime)
    if wrap:  # line-wrapped base64, as some encoders emit it
        head, body = uri.split(",", 1)
        uri = head + "," + "\r\n".join(body[i:i + wrap] for i in range(0, len(body), wrap))
    assert parse_data_uri(uri, max_bytes=len(data)).data == data
    with pytest.raises(PayloadTooLarge):
        parse_data_uri(uri, max_bytes=len(data) - 1)


@given(st.binary(max_size=2000))
@settings(max_examples=150, deadline=None)
def test_decode_audio_on_arbitrary_bytes_raises_only_domain_errors(data: bytes) -> None:
    try:
        samples = decode_audio(data, max_seconds=5)
    except VoiceForgeError as error:
        assert error.status == 415
        return
    assert samples.dtype == np.float32 and 0 < samples.size <= 5 * RATE


@given(st.sampled_from(list(FORMATS)), st.data())
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_decode_audio_on_corrupted_real_files_raises_only_domain_errors(
        fmt: str, draw: st.DataObject) -> None:
    data = bytearray(encoded(fmt)[0][:6000])  # the headers and the first frames
    for _ in range(draw.draw(st.integers(1, 8))):
        position = draw.draw(st.integers(0, len(data) - 1))
        data[position] = draw.draw(st.integers(0, 255))
    try:
        samples = decode_audio(bytes(data), max_seconds=5)
    except VoiceForgeError as error:
        assert error.status == 415
        return
    assert samples.dtype == np.float32 and samples.size <= 5 * RATE
    assert np.all(np.isfinite(samples))


def test_url_safe_base64_is_rejected_with_a_hint() -> None:
    # Documented decision: URL-safe input is rejected, not silently translated.
    url_safe = base64.urlsafe_b64encode(b"\xfb\xff\xbf" * 4).decode()
    with pytest.raises(BadRequest, match="URL-safe"):
        parse_data_uri(f"data:audio/wav;base64,{url_safe}", max_bytes=MAX_BYTES)
