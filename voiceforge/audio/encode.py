"""Encode mono float speech as WAV, MP3, Ogg/Opus, AAC, FLAC or raw PCM, whole or as a stream."""

from __future__ import annotations

import io
import struct
import wave
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import av
import numpy as np

OUTPUT_RATE = 24000  # XTTS-v2's output rate: the rate the MIME types below are written for
# Whole buffers go to the encoder in pieces of this many samples, so a long clip never needs
# one huge FFmpeg frame (and its format conversions) in memory at once.
_CHUNK = 65536


@dataclass(frozen=True)
class AudioFormat:
    """One output format: how it is labelled for clients and how FFmpeg produces it."""

    name: str
    mime_type: str  # the Content-Type for audio at OUTPUT_RATE (see mime_type_at for others)
    extension: str  # file name extension, without the dot
    container: str | None = None  # FFmpeg muxer; None: written here, byte for byte (wav, pcm)
    codec: str | None = None  # FFmpeg encoder
    bit_rate: int | None = None  # None for lossless codecs
    # Muxer options for streaming, where the output cannot seek back to patch a header and bytes
    # must leave after every chunk instead of at the end.
    stream_options: tuple[tuple[str, str], ...] = ()

    @property
    def headerless(self) -> bool:
        """Raw samples: nothing in the bytes says the rate, so the MIME type has to."""
        return self.mime_type.startswith("audio/pcm")

    def mime_type_at(self, rate: int) -> str:
        """The MIME type for audio at `rate`; only raw PCM's depends on the rate."""
        if not self.headerless:
            return self.mime_type
        return f"{self.mime_type.split(';', 1)[0]};rate={rate};channels=1"


# MIME types: audio/wav, audio/mpeg (RFC 3003), audio/ogg (RFC 7845 for Opus in Ogg; the optional
# `codecs=opus` is left out), audio/aac (ADTS, as browsers label .aac files), audio/flac, and for
# raw PCM `audio/pcm;rate=24000;channels=1`: signed 16-bit little-endian, OpenAI's "pcm" layout.
# Not audio/L16, which RFC 2586 defines as big-endian: a client honouring it would byte-swap.
# Bit rates suit one speech voice at 24 kHz: well above where artefacts are audible, and a
# fraction of WAV's 384 kbit/s.
FORMATS: dict[str, AudioFormat] = {
    "wav": AudioFormat("wav", "audio/wav", "wav"),
    "mp3": AudioFormat(
        "mp3", "audio/mpeg", "mp3", "mp3", "libmp3lame", 64_000,
        # The Xing/LAME frame is a placeholder patched at the end, so a stream gets none (and
        # players see it as plain CBR); ID3 tags would only name the FFmpeg version.
        stream_options=(("write_xing", "0"), ("id3v2_version", "0"), ("write_id3v1", "0"))),
    # libopus encodes 24 kHz directly (it accepts 8/12/16/24/48 kHz); decoders play Opus at
    # 48 kHz whatever the input rate was (RFC 7845 section 5.1), so a decoded file reports 48000.
    "opus": AudioFormat(
        "opus", "audio/ogg", "opus", "ogg", "libopus", 32_000,
        # Ogg pages are flushed every second by default; 0.1 s keeps a stream's latency low.
        stream_options=(("page_duration", "100000"),)),
    "aac": AudioFormat("aac", "audio/aac", "aac", "adts", "aac", 64_000),
    "flac": AudioFormat("flac", "audio/flac", "flac", "flac", "flac"),
    "pcm": AudioFormat("pcm", f"audio/pcm;rate={OUTPUT_RATE};channels=1", "pcm"),
}
# Options both ways: ID3v2 tags (on by default in the mp3 muxer) carry only "Lavf<version>".
_ALWAYS_OPTIONS = {"mp3": {"id3v2_version": "0", "write_id3v1": "0"}}


def encode_wav(samples: np.ndarray, rate: int) -> bytes:
    """Encode mono float samples as a 16-bit PCM WAV file (values outside [-1, 1] are clipped)."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    pcm = _pcm16(samples)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.tobytes())
    return buffer.getvalue()


def encode(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    """Encode a whole buffer of mono float samples in [-1, 1] (clipped) as format `fmt`.

    Unlike a stream, the output here can seek, so headers are complete: an MP3 gets its Xing/LAME
    frame (exact length and gapless trimming) and a FLAC its total sample count and MD5.
    No samples give a header-only WAV or FLAC, but b"" for MP3, Opus and AAC (PyAV writes the
    header with the first packet), so callers should not encode empty audio.
    Raises ValueError for an unknown format or a rate that is not positive.
    """
    spec = _format(fmt)
    if rate <= 0:
        raise ValueError("rate must be positive")
    if spec.name == "wav":
        return encode_wav(samples, rate)
    if spec.name == "pcm":
        return _pcm16(samples).tobytes()
    output = io.BytesIO()
    encoder = _MuxedEncoder(spec, rate, output, streaming=False)
    pcm = _pcm16(samples)
    for start in range(0, pcm.size, _CHUNK):
        encoder.write(pcm[start:start + _CHUNK])
    encoder.close()
    return output.getvalue()


class StreamEncoder:
    """Encode audio chunk by chunk as it is synthesised, returning bytes as soon as they exist.

    Concatenating every write() result and close() gives one playable file (or raw PCM). The
    output never seeks, so it can go straight into an HTTP response: MP3 without the Xing/LAME
    frame, Ogg pages every 0.1 s, FLAC without the total length and MD5 in its header, and WAV
    with the "unknown length" sizes 0xFFFFFFFF that browsers and FFmpeg read to end of stream.
    Use it as a context manager, or call close(), so FFmpeg's resources are released.
    """

    def __init__(self, fmt: str, rate: int) -> None:
        self.format = _format(fmt)
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._closed = False
        self._encoder: _Encoder
        self._sink = _Sink()
        if self.format.name == "wav":
            self._encoder = _RawEncoder(_streaming_wav_header(rate))
        elif self.format.name == "pcm":
            self._encoder = _RawEncoder(b"")
        else:
            self._encoder = _MuxedEncoder(self.format, rate, self._sink, streaming=True)

    @property
    def mime_type(self) -> str:
        """The Content-Type of the stream."""
        return self.format.mime_type_at(self.rate)

    def write(self, samples: np.ndarray) -> bytes:
        """Encode one chunk of mono float samples (any length); return the bytes ready so far.

        May return b"": codecs hold back up to a frame or two (lookahead, frame alignment).
        """
        if self._closed:
            raise ValueError("write() after close()")
        return self._encoder.write(_pcm16(samples)) + self._sink.take()

    def close(self) -> bytes:
        """Flush the resampler, the encoder and the muxer; return the last bytes (b"" if closed)."""
        if self._closed:
            return b""
        self._closed = True
        return self._encoder.close() + self._sink.take()

    def __enter__(self) -> StreamEncoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _format(fmt: str) -> AudioFormat:
    try:
        return FORMATS[fmt]
    except (KeyError, TypeError):
        raise ValueError(f"unknown audio format {fmt!r}; expected one of "
                         f"{', '.join(FORMATS)}") from None


def _pcm16(samples: np.ndarray) -> np.ndarray:
    """Clip and quantise to little-endian int16 exactly as the WAV output always has.

    Every format starts from these integers, so WAV, FLAC and PCM decode to identical samples.
    """
    audio = np.nan_to_num(np.asarray(samples, dtype=np.float64).reshape(-1))
    return np.rint(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")


def _streaming_wav_header(rate: int) -> bytes:
    """A canonical 44-byte PCM WAV header whose RIFF and data sizes say "unknown" (0xFFFFFFFF)."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)  # PCM, mono, 16-bit
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt))
            + fmt + b"data" + struct.pack("<I", unknown))


class _Encoder(Protocol):
    def write(self, pcm: np.ndarray) -> bytes: ...

    def close(self) -> bytes: ...


class _Sink:
    """A write-only file for PyAV: collects what the muxer writes until it is taken.

    Having no seek() makes FFmpeg treat the output as unseekable, so muxers never try to patch
    an earlier header and flush after each packet instead of buffering.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


class _RawEncoder:
    """WAV (after its header) and PCM are the int16 samples themselves: no FFmpeg needed."""

    def __init__(self, header: bytes) -> None:
        self._header = header

    def write(self, pcm: np.ndarray) -> bytes:
        data, self._header = self._header + pcm.tobytes(), b""
        return data

    def close(self) -> bytes:
        # A stream with no samples is still a valid (empty) WAV file.
        data, self._header = self._header, b""
        return data


class _MuxedEncoder:
    """int16 chunks -> libswresample (format, rate, codec frame size) -> encoder -> muxer."""

    def __init__(self, spec: AudioFormat, rate: int, output: object, *, streaming: bool) -> None:
        options = dict(_ALWAYS_OPTIONS.get(spec.name, {}))
        if streaming:
            options.update(spec.stream_options)
            options["flush_packets"] = "1"  # hand each packet to the sink at once
        self._rate = rate
        self._pts = 0
        self._container = av.open(output, "w", format=spec.container, container_options=options)
        try:
            self._stream = self._container.add_stream(
                spec.codec, rate=_codec_rate(spec.codec, rate), layout="mono")
            context = self._stream.codec_context
            if spec.bit_rate:
                context.bit_rate = spec.bit_rate
            context.open()  # opened early so its sample format and frame size are known
            # Encoders other than PCM take exactly frame_size samples per frame (the last may
            # be short); the resampler also converts int16 to the codec's sample format.
            self._resampler = av.AudioResampler(format=context.format, layout="mono",
                                                rate=context.sample_rate,
                                                frame_size=context.frame_size or None)
        except BaseException:
            self._container.close()
            raise

    def write(self, pcm: np.ndarray) -> bytes:
        if pcm.size:
            frame = av.AudioFrame.from_ndarray(pcm[np.newaxis, :], format="s16", layout="mono")
            frame.sample_rate = self._rate
            frame.pts = self._pts
            frame.time_base = Fraction(1, self._rate)
            self._pts += pcm.size
            self._encode(frame)
        return b""  # the muxer writes into the sink (or file) itself

    def close(self) -> bytes:
        try:
            self._encode(None)  # the resampler's remainder, then the encoder's delayed frames
        finally:
            self._container.close()  # writes the trailer (Ogg's last page, patched headers)
        return b""

    def _encode(self, frame: av.AudioFrame | None) -> None:
        for converted in self._resampler.resample(frame):
            self._container.mux(self._stream.encode(converted))
        if frame is None:
            self._container.mux(self._stream.encode(None))


def _codec_rate(codec: str, rate: int) -> int:
    """The input rate if the encoder takes it, else the next supported one up (or the highest)."""
    supported = av.Codec(codec, "w").audio_rates
    if not supported or rate in supported:
        return rate
    higher = [candidate for candidate in supported if candidate > rate]
    return min(higher) if higher else max(supported)
