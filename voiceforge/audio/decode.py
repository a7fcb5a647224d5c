"""Decode uploads safely: any supported container's first audio stream to mono float32."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator

import av
import numpy as np

from voiceforge.errors import UnsupportedMedia

log = logging.getLogger(__name__)

# Only demuxers that read a single self-contained audio/video file. FFmpeg would otherwise also
# probe playlists and concat scripts (hls, concat, ...) that open *other* files or URLs by name:
# an upload must never make the server read its own disk.
_DEMUXERS = ("wav,w64,rf64,mp3,ogg,matroska,webm,mov,mp4,m4a,3gp,3g2,flac,aac,aiff,caf,amr,"
             "amrnb,amrwb,asf,au,wv,ape,tta,ac3,eac3,mpc,mpc8,avi,mpegts")
_MIN_RATE, _MAX_RATE = 1_000, 768_000  # beyond these a header is lying or it is not speech audio
# A real clip decodes far faster; this only stops a pathological file from holding a worker.
_DECODE_TIME_LIMIT_S = 20.0
_MAX_BAD_PACKETS = 8
_SUPPORTED = "Send a WAV, MP3, OGG, WebM, M4A/AAC or FLAC recording."
# (offset, bytes, what): RIFF files say what they hold at byte 8 (WAVE, AVI, WEBP).
_NON_AUDIO_SIGNATURES = (
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"), (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"GIF8", "a GIF image"), (0, b"PK\x03\x04", "a ZIP archive"), (0, b"%PDF", "a PDF document"),
    (0, b"\x1f\x8b", "a gzip archive"), (0, b"BM", "a BMP image"), (8, b"WEBP", "a WebP image"),
)
_AUDIO_SIGNATURES = (
    (8, b"WAVE", "a WAV"), (8, b"AVI ", "an AVI"), (0, b"OggS", "an Ogg"), (0, b"fLaC", "a FLAC"),
    (0, b"ID3", "an MP3"), (0, b"\x1aE\xdf\xa3", "a WebM/Matroska"), (4, b"ftyp", "an MP4/M4A"),
)
_MAX_AUDIO_STREAMS = 4  # a multi-track file: the first few tracks are tried for one with sound
# Scale of each integer sample format, so any decoder output becomes float in [-1, 1].
_INT_SCALE = {"u8": 128.0, "s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63}


def decode_audio(data: bytes, *, target_rate: int = 22050, max_seconds: float) -> np.ndarray:
    """Decode any supported container's first audio stream with sound to mono float32 at `target_rate`.

    The declared MIME type is never consulted: FFmpeg probes the bytes. In a file of several audio
    tracks (screen recorders, OBS) a digitally silent track is passed over for the next one.
    Decoding stops once `max_seconds` of output exist, so a tiny file of hours of compressed
    silence costs no more than `max_seconds` of audio in memory and time (per track tried). A
    damaged stream keeps what decoded before the damage. Raises UnsupportedMedia (415) when nothing
    usable can be decoded.
    """
    if target_rate <= 0 or max_seconds <= 0:
        raise ValueError("target_rate and max_seconds must be positive")
    if not data:
        raise UnsupportedMedia(f"The upload is empty. {_SUPPORTED}")
    limit = max(1, int(max_seconds * target_rate))
    first: np.ndarray | None = None
    for index in range(_MAX_AUDIO_STREAMS):
        with _open(data) as container:
            if index and index >= len(container.streams.audio):
                break
            stream = _audio_stream(container, index)
            samples = _decode_stream(container, stream, target_rate, limit)
        if first is None:
            first = samples
        if samples.size and np.any(samples):
            return samples
    if first is None or first.size == 0:
        raise UnsupportedMedia("The audio stream contains no decodable sound.")
    return first  # silent in every track: what to say about that is the caller's business


def _open(data: bytes) -> av.container.InputContainer:
    try:
        return av.open(io.BytesIO(data), mode="r", metadata_errors="replace",
                       container_options={"format_whitelist": _DEMUXERS})
    except (av.FFmpegError, ValueError) as exc:
        raise UnsupportedMedia(f"{_describe(data)} {_SUPPORTED}") from exc


def _describe(data: bytes) -> str:
    """Say what an unreadable upload looks like, so the user knows what they sent by mistake."""
    for offset, signature, name in _NON_AUDIO_SIGNATURES:
        if data[offset:offset + len(signature)] == signature:
            return f"The upload is {name}, not audio."
    for offset, signature, name in _AUDIO_SIGNATURES:
        if data[offset:offset + len(signature)] == signature:
            return f"The upload looks like {name} file but could not be read (damaged or unsupported)."
    head = data[:512]
    if head.isascii() and all(byte >= 32 or byte in b"\t\n\r" for byte in head):
        return "The upload is text, not audio."
    return "The upload is not in a recognised audio format."


def _audio_stream(container: av.container.InputContainer, index: int) -> av.AudioStream:
    if not container.streams.audio:
        kinds = sorted({stream.type for stream in container.streams}) or ["no streams"]
        raise UnsupportedMedia(f"The file has no audio stream (found: {', '.join(kinds)}). {_SUPPORTED}")
    stream = container.streams.audio[index]
    context = stream.codec_context
    if context is None:
        raise UnsupportedMedia(f"The audio codec in this file is not supported. {_SUPPORTED}")
    if context.channels <= 0:
        # FFmpeg reports 0 both for a header saying 0 and for counts beyond its sanity limit.
        raise UnsupportedMedia("The audio stream declares no usable channels.")
    return stream


def _decode_stream(container: av.container.InputContainer, stream: av.AudioStream,
                   target_rate: int, limit: int) -> np.ndarray:
    """Decode frame by frame into bounded chunks; stop at `limit` samples or at damage."""
    chunks = _BoundedChunks(limit)
    resampler = _MonoResampler(target_rate)
    deadline = time.monotonic() + _DECODE_TIME_LIMIT_S
    try:
        for frame in _frames(container, stream, deadline):
            chunks.add(resampler.resample(frame))
            if chunks.full:
                log.info("audio exceeds max_seconds: keeping only the first %.1f s",
                         limit / target_rate)
                return chunks.result()
        chunks.add(resampler.flush())
    except (av.FFmpegError, ValueError) as exc:
        if not chunks.count:
            raise UnsupportedMedia(f"Could not decode the audio ({_reason(exc)}). "
                                   f"{_SUPPORTED}") from exc
        # Truncated uploads are common (a recording cut off mid-transfer): keep the good part.
        log.info("audio damaged after %.2f s (%s); keeping the part before it",
                 chunks.count / target_rate, _reason(exc))
    return chunks.result()


def _frames(container: av.container.InputContainer, stream: av.AudioStream,
            deadline: float) -> Iterator[av.AudioFrame]:
    bad_packets = 0
    for packet in container.demux(stream):
        if time.monotonic() > deadline:
            raise UnsupportedMedia("The audio took too long to decode; it may be damaged.")
        try:
            frames = packet.decode()
        except av.FFmpegError:
            # Like ffmpeg itself, step over a few corrupt packets (a flipped bit in transfer)
            # rather than losing the rest of the recording; more than a few means it is garbage.
            bad_packets += 1
            if bad_packets > _MAX_BAD_PACKETS:
                raise
            continue
        for frame in frames:
            if frame.samples:
                _check_frame(frame)
                yield frame
    if bad_packets:
        log.info("skipped %d damaged audio packet(s)", bad_packets)


def _check_frame(frame: av.AudioFrame) -> None:
    if not _MIN_RATE <= frame.sample_rate <= _MAX_RATE:
        raise UnsupportedMedia(f"The audio's sample rate of {frame.sample_rate} Hz is not "
                               f"supported ({_MIN_RATE}-{_MAX_RATE} Hz).")
    if frame.layout.nb_channels <= 0:
        raise UnsupportedMedia("The audio stream declares no usable channels.")


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class _BoundedChunks:
    """Collects decoded arrays but never holds more than one frame beyond `limit` samples."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self._chunks: list[np.ndarray] = []

    @property
    def full(self) -> bool:
        return self.count >= self.limit

    def add(self, arrays: list[np.ndarray]) -> None:
        for array in arrays:
            if self.full:
                return
            self._chunks.append(array)
            self.count += array.size

    def result(self) -> np.ndarray:
        if not self._chunks:
            return np.zeros(0, dtype=np.float32)
        samples = np.concatenate(self._chunks)[: self.limit].astype(np.float32, copy=False)
        # Float codecs (pcm_f32le, ...) can carry NaN or infinities; they must not reach the model.
        return np.nan_to_num(samples, copy=False, nan=0.0, posinf=0.0, neginf=0.0)


class _MonoResampler:
    """Downmix in numpy, then let libswresample change only the rate.

    FFmpeg's own downmix refuses some channel layouts it cannot name (9 or 32 unordered
    channels in a WAV, say); averaging channels works for every count and suits speech.
    A rate change mid-stream gets a fresh resampler instead of an error.
    """

    def __init__(self, target_rate: int) -> None:
        self.target_rate = target_rate
        self._rate = 0
        self._resampler: av.AudioResampler | None = None

    def resample(self, frame: av.AudioFrame) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        if frame.sample_rate != self._rate:
            out = self.flush()
            self._rate = frame.sample_rate
            self._resampler = av.AudioResampler(format="flt", layout="mono",
                                                rate=self.target_rate)
        mono = av.AudioFrame.from_ndarray(_downmix(frame)[np.newaxis, :], format="flt",
                                          layout="mono")
        mono.sample_rate = frame.sample_rate
        return out + [_samples(f) for f in self._resampler.resample(mono)]

    def flush(self) -> list[np.ndarray]:
        if self._resampler is None:
            return []
        return [_samples(f) for f in self._resampler.resample(None)]


def _downmix(frame: av.AudioFrame) -> np.ndarray:
    """Average all channels of any sample format into one float32 channel."""
    fmt = frame.format
    channels = frame.layout.nb_channels
    array = frame.to_ndarray()
    # Planar formats come as (channels, samples); packed ones interleave into (1, samples*channels).
    array = array if fmt.is_planar else array.reshape(-1, channels).T
    name = fmt.name.rstrip("p")
    values = array.astype(np.float64)
    if name == "u8":
        values -= 128.0
    values /= _INT_SCALE.get(name, 1.0)
    mono = values.mean(axis=0)
    if channels > 1:
        # Channels that cancel (a microphone wired in reverse polarity on one side) average to near
        # silence: the loudest channel alone is the recording then.
        power = np.mean(values**2, axis=1)
        if power.max() > 0 and np.mean(mono**2) < 0.01 * power.max():
            return values[int(power.argmax())].astype(np.float32)
    return mono.astype(np.float32)


def _samples(frame: av.AudioFrame) -> np.ndarray:
    return frame.to_ndarray().reshape(-1).copy()
