"""Output encoding: every format round-trips through PyAV, whole and streamed chunk by chunk."""

from __future__ import annotations

import functools
import io
import struct

import av
import numpy as np
import pytest

from tests.support.audio import speech_like
from voiceforge.audio.encode import FORMATS, StreamEncoder, encode, encode_wav

RATE = 24000
SECONDS = 3.0
CHUNK = RATE // 4  # 0.25 s, about what the synthesiser yields at a time
LOSSLESS = ("wav", "flac", "pcm")
CODED = ("wav", "mp3", "opus", "aac", "flac")  # every format but headerless pcm
# What a decoder reports: Opus always decodes at 48 kHz (RFC 7845), whatever rate went in.
DECODED_RATE = {"opus": 48000}
# How much longer than the input a decode may be. ADTS cannot signal AAC's 1024-sample priming,
# so decoders play it, plus padding to a whole 1024-sample frame (measured: +72 ms). A streamed
# MP3 has no LAME frame to trim the encoder delay (measured: +48 ms). Whole MP3s, Ogg/Opus
# (pre-skip and end trimming in the granule positions) and the lossless formats are exact.
EXTRA_SECONDS = {"aac": 0.1, "mp3": 0.06}


@functools.cache
def signal() -> np.ndarray:
    return speech_like(SECONDS, RATE)


@functools.cache
def whole(fmt: str) -> bytes:
    return encode(signal(), RATE, fmt)


def stream(fmt: str, samples: np.ndarray, sizes: list[int]) -> list[bytes]:
    """Feed `samples` in chunks of `sizes` (cycled); return each write()'s bytes, close()'s last."""
    encoder = StreamEncoder(fmt, RATE)
    parts, start, index = [], 0, 0
    while start < samples.size:
        size = sizes[index % len(sizes)]
        parts.append(encoder.write(samples[start:start + size]))
        start, index = start + size, index + 1
    parts.append(encoder.close())
    return parts


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Decode with PyAV to int16-scaled mono samples and the decoder's sample rate."""
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float64), RATE
    chunks, rate = [], 0
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.channels == 1
        for frame in container.decode(stream):
            assert frame.layout.nb_channels == 1
            rate = frame.sample_rate
            chunks.append(_as_int16_scale(frame))
    return np.concatenate(chunks), rate


def _as_int16_scale(frame: av.AudioFrame) -> np.ndarray:
    array = frame.to_ndarray().reshape(-1).astype(np.float64)
    return array if frame.format.name.startswith("s16") else array * 32768.0


def best_correlation(decoded: np.ndarray, reference: np.ndarray, max_lag: int = 4096) -> float:
    """Peak normalised cross-correlation over lags up to `max_lag` (codec delays shift audio)."""
    n = 1 << int(np.ceil(np.log2(decoded.size + reference.size)))
    a, b = decoded - decoded.mean(), reference - reference.mean()
    cross = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)
    lags = np.concatenate([cross[:max_lag + 1], cross[-max_lag:]])
    return float(lags.max() / (np.linalg.norm(a) * np.linalg.norm(b)))


def at_input_rate(samples: np.ndarray, rate: int) -> np.ndarray:
    """Bring a 48 kHz Opus decode back to 24 kHz so it can be compared with the input."""
    if rate == RATE:
        return samples
    frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[np.newaxis, :] / 32768.0,
                                       format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
    frames = resampler.resample(frame) + resampler.resample(None)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float64) * 32768


def expected_pcm(samples: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(samples.astype(np.float64), -1, 1) * 32767.0)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_whole_buffer_decodes_to_the_input(fmt: str) -> None:
    decoded, rate = decode(whole(fmt), fmt)
    assert rate == DECODED_RATE.get(fmt, RATE)
    extra = decoded.size - round(SECONDS * rate)
    assert 0 <= extra <= (EXTRA_SECONDS["aac"] * rate if fmt == "aac" else 0)
    if fmt in LOSSLESS:
        assert np.max(np.abs(decoded - expected_pcm(signal()))) <= 1.0
    else:
        assert best_correlation(at_input_rate(decoded, rate), signal() * 32768.0) > 0.95


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_stream_sends_bytes_before_close(fmt: str) -> None:
    parts = stream(fmt, signal(), [CHUNK])
    writes = parts[:-1]
    assert len(writes) == SECONDS * 4
    # Audio must flow while synthesis is still running, not arrive all at once at the end.
    assert sum(map(len, writes[:3])) > 0
    assert sum(1 for part in writes if part) >= len(writes) - 2
    assert len(parts[-1]) < sum(map(len, writes))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_stream_decodes_like_the_whole_buffer(fmt: str) -> None:
    streamed, rate = decode(b"".join(stream(fmt, signal(), [CHUNK])), fmt)
    whole_decoded, whole_rate = decode(whole(fmt), fmt)
    assert rate == whole_rate == DECODED_RATE.get(fmt, RATE)
    extra = streamed.size - whole_decoded.size
    assert 0 <= extra <= (EXTRA_SECONDS["mp3"] * rate if fmt == "mp3" else 0)
    if fmt in LOSSLESS:
        assert np.array_equal(streamed, whole_decoded)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_stream_takes_any_chunk_sizes(fmt: str) -> None:
    # Odd sizes straddle codec frames (576, 480, 1024, 2304 samples), including 1-sample writes.
    samples = signal()[: RATE]
    decoded, rate = decode(b"".join(stream(fmt, samples, [1, 7, 1000, 4097, 333])), fmt)
    regular, _ = decode(b"".join(stream(fmt, samples, [CHUNK])), fmt)
    assert decoded.size == regular.size
    if fmt in LOSSLESS:
        assert np.array_equal(decoded, expected_pcm(samples))
    else:
        assert best_correlation(at_input_rate(decoded, rate), samples * 32768.0) > 0.95


def test_streamed_wav_has_an_unknown_length_header() -> None:
    data = b"".join(stream("wav", signal(), [CHUNK]))
    riff, riff_size, wave_id = struct.unpack("<4sI4s", data[:12])
    data_id, data_size = struct.unpack("<4sI", data[36:44])
    assert (riff, wave_id, data_id) == (b"RIFF", b"WAVE", b"data")
    assert riff_size == data_size == 0xFFFFFFFF
    assert data[8:36] == encode_wav(signal(), RATE)[8:36]  # the same fmt chunk as a whole file
    assert data[44:] == encode(signal(), RATE, "pcm")


def test_wav_is_exactly_encode_wav() -> None:
    noisy = np.concatenate([signal(), [2.0, -3.0, np.nan, np.inf]]).astype(np.float32)
    assert encode(noisy, RATE, "wav") == encode_wav(noisy, RATE)
    assert encode(noisy, 22050, "wav") == encode_wav(noisy, 22050)


def test_pcm_is_clipped_little_endian_int16() -> None:
    data = encode(np.array([0.0, 0.5, 1.5, -2.0, np.nan]), RATE, "pcm")
    assert data == struct.pack("<5h", 0, 16384, 32767, -32767, 0)
    assert FORMATS["pcm"].mime_type_at(16000) == "audio/pcm;rate=16000;channels=1"
    assert FORMATS["mp3"].mime_type_at(16000) == "audio/mpeg"


def test_formats_declare_mime_types_and_extensions() -> None:
    assert {name: (spec.mime_type, spec.extension) for name, spec in FORMATS.items()} == {
        "wav": ("audio/wav", "wav"), "mp3": ("audio/mpeg", "mp3"), "opus": ("audio/ogg", "opus"),
        "aac": ("audio/aac", "aac"), "flac": ("audio/flac", "flac"),
        "pcm": ("audio/pcm;rate=24000;channels=1", "pcm")}
    assert all(name == spec.name for name, spec in FORMATS.items())


def test_unknown_format_and_bad_rate_raise_value_error() -> None:
    for fmt in ("ogg", "WAV", ""):
        with pytest.raises(ValueError, match="unknown audio format"):
            encode(signal(), RATE, fmt)
        with pytest.raises(ValueError, match="unknown audio format"):
            StreamEncoder(fmt, RATE)
    with pytest.raises(ValueError, match="rate"):
        encode(signal(), 0, "mp3")
    with pytest.raises(ValueError, match="rate"):
        StreamEncoder("mp3", -1)


def test_stream_is_closed_once() -> None:
    with StreamEncoder("opus", RATE) as encoder:
        assert encoder.mime_type == "audio/ogg"
        encoder.write(signal()[:CHUNK])
    assert encoder.close() == b""
    with pytest.raises(ValueError, match="after close"):
        encoder.write(signal()[:CHUNK])


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac"])
def test_other_input_rates_are_encoded_or_resampled(fmt: str) -> None:
    # 22050 Hz is not an Opus rate: it is resampled up to 24 kHz; the others take it as is.
    samples = speech_like(1.0, 22050)
    decoded, rate = decode(encode(samples, 22050, fmt), fmt)
    assert rate == {"opus": 48000}.get(fmt, 22050)
    assert decoded.size / rate == pytest.approx(1.0, abs=0.1)
