"""Audio in and out: parse data URIs, decode uploads safely, prepare references, encode WAV."""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import re
import tempfile
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from voiceforge.errors import BadRequest, PayloadTooLarge, Unprocessable, UnsupportedMedia

log = logging.getLogger(__name__)

# --- data URIs ---------------------------------------------------------------------------------

# WHATWG's "ASCII whitespace": what line-wrapped base64 may legitimately contain.
_ASCII_WHITESPACE = " \t\n\r\f"
_STRIP_WHITESPACE = str.maketrans("", "", _ASCII_WHITESPACE)
_TOKEN = r"[!#$&'*+.^_`|~0-9A-Za-z-]+"  # RFC 2045 token characters
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}")
# Firefox's MediaRecorder blobs say "audio/ogg; codecs=opus": a space may precede a parameter.
_PARAMETER = re.compile(rf"[ \t]*{_TOKEN}=[^;,]*")
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")
# RFC 2397 leaves the header unbounded; a real one ("audio/webm;codecs=opus") is tiny, and a cap
# keeps a pathological header from being scanned or echoed back at length.
_MAX_HEADER_CHARS = 256
_DEFAULT_MEDIA_TYPE = "text/plain"  # RFC 2397's default when the media type is omitted


@dataclass(frozen=True)
class DataUri:
    """A parsed data URI: the declared MIME type (a hint only) and the decoded bytes."""

    mime_type: str
    data: bytes = field(repr=False)  # never dump megabytes of audio into logs or tracebacks


def parse_data_uri(uri: str, *, max_bytes: int) -> DataUri:
    """Parse a strict RFC 2397 base64 data URI, bounding the decoded size before decoding.

    Only the standard base64 alphabet is accepted (RFC 2397 refers to RFC 2045, and browsers'
    FileReader.readAsDataURL emit it): URL-safe `-`/`_` are rejected with a hint rather than
    guessed at. ASCII whitespace inside the payload is ignored; padding is required.
    Raises BadRequest (400) for malformed input and PayloadTooLarge (413) over `max_bytes`.
    """
    if not isinstance(uri, str):
        raise BadRequest(f"The audio must be a data URI string, not {type(uri).__name__}.")
    uri = uri.strip(_ASCII_WHITESPACE)
    if uri[:5].lower() != "data:":
        raise BadRequest("The audio must be a data URI starting with 'data:'.")
    comma = uri.find(",", 5, 5 + _MAX_HEADER_CHARS + 1)
    if comma < 0:
        raise BadRequest(_missing_comma_detail(uri))
    mime_type = _parse_header(uri[5:comma])
    data = _decode_base64(uri[comma + 1:], max_bytes=max_bytes)
    log.debug("parsed data URI: declared %s, %d bytes", mime_type, len(data))
    return DataUri(mime_type=mime_type, data=data)


def _missing_comma_detail(uri: str) -> str:
    if "," in uri:
        return f"The data URI header is longer than {_MAX_HEADER_CHARS} characters."
    return "The data URI has no ',' separating the header from the data."


def _parse_header(header: str) -> str:
    """Validate `[<type/subtype>][;attr=value]*;base64` and return the lowercased media type."""
    parts = header.split(";")
    if len(parts) < 2 or parts[-1].lower() != "base64":
        raise BadRequest("Audio data URIs must be base64-encoded: 'data:<mime type>;base64,<data>'.")
    media_type, parameters = parts[0], parts[1:-1]
    if media_type and not _MEDIA_TYPE.fullmatch(media_type):
        raise BadRequest(f"The data URI's media type {media_type[:64]!r} is not 'type/subtype'.")
    for parameter in parameters:
        # Parameters such as MediaRecorder's `codecs=opus` are tolerated but never trusted.
        if not _PARAMETER.fullmatch(parameter):
            raise BadRequest(f"The data URI parameter {parameter[:64]!r} is not 'name=value'.")
    return media_type.lower() or _DEFAULT_MEDIA_TYPE


def _decode_base64(payload: str, *, max_bytes: int) -> bytes:
    # Size first, from the length alone: counting whitespace needs no copy, so an oversized
    # upload is refused before any memory is spent on stripping or decoding it.
    length = len(payload) - sum(payload.count(char) for char in _ASCII_WHITESPACE)
    if length == 0:
        raise BadRequest("The data URI contains no audio data.")
    tail = payload[-16:].translate(_STRIP_WHITESPACE)
    padding = min(2, len(tail) - len(tail.rstrip("=")))
    _check_size(length * 3 // 4 - padding, max_bytes)
    compact = payload.translate(_STRIP_WHITESPACE)
    _check_base64_alphabet(compact)
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"The data URI's base64 data is invalid ({exc}).") from exc
    if not data:
        raise BadRequest("The data URI contains no audio data.")
    # The estimate can be 2 bytes short when whitespace hides the padding; the result is exact.
    _check_size(len(data), max_bytes)
    return data


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        shown, limit = _megabytes(size), _megabytes(max_bytes)
        if shown == limit:
            # Just over the limit both round alike ("21.0 MB; the limit is 21.0 MB"): be exact.
            shown, limit = f"{size:,} bytes", f"{max_bytes:,} bytes"
        raise PayloadTooLarge(f"The audio is {shown}; the limit is {limit}.")


def _check_base64_alphabet(compact: str) -> None:
    """Explain the usual base64 mistakes precisely instead of echoing binascii's terse errors."""
    bad = _NOT_BASE64.search(compact)
    if bad:
        hint = " (URL-safe base64 is not accepted; use '+' and '/')" if bad[0] in "-_" else ""
        raise BadRequest(f"The data URI's base64 data contains {bad[0]!r} at position "
                         f"{bad.start()}, which is not a base64 character{hint}.")
    stripped = compact.rstrip("=")
    if "=" in stripped or len(compact) - len(stripped) > 2:
        raise BadRequest("The data URI's base64 padding '=' may appear only at the end, "
                         "at most twice.")
    if len(compact) % 4:
        raise BadRequest("The data URI's base64 data has missing or extra characters "
                         "(its length is not a multiple of 4; is the '=' padding missing?).")


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB" if size >= 100_000 else f"{size} bytes"


# --- decoding ----------------------------------------------------------------------------------

# Only demuxers that read a single self-contained audio/video file. FFmpeg would otherwise also
# probe playlists and concat scripts (hls, concat, ...) that open *other* files or URLs by name:
# an upload must never make the server read its own disk.
_DEMUXERS = ("wav,w64,rf64,mp3,ogg,matroska,webm,mov,mp4,m4a,3gp,3g2,flac,aac,aiff,caf,amr,"
             "amrnb,amrwb,asf,au,wv,ape,tta,ac3,eac3,mpc,mpc8")
_MIN_RATE, _MAX_RATE = 1_000, 768_000  # beyond these a header is lying or it is not speech audio
# A real clip decodes far faster; this only stops a pathological file from holding a worker.
_DECODE_TIME_LIMIT_S = 20.0
_MAX_BAD_PACKETS = 8
_SUPPORTED = "Send a WAV, MP3, OGG, WebM, M4A/AAC or FLAC recording."
_NON_AUDIO_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"), (b"PK\x03\x04", "a ZIP archive"), (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"), (b"BM", "a BMP image"),
)
_AUDIO_SIGNATURES = (
    (0, b"RIFF", "a WAV"), (0, b"OggS", "an Ogg"), (0, b"fLaC", "a FLAC"), (0, b"ID3", "an MP3"),
    (0, b"\x1aE\xdf\xa3", "a WebM/Matroska"), (4, b"ftyp", "an MP4/M4A"),
)
# Scale of each integer sample format, so any decoder output becomes float in [-1, 1].
_INT_SCALE = {"u8": 128.0, "s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63}


def decode_audio(data: bytes, *, target_rate: int = 22050, max_seconds: float) -> np.ndarray:
    """Decode any supported container's first audio stream to mono float32 at `target_rate`.

    The declared MIME type is never consulted: FFmpeg probes the bytes. Decoding stops once
    `max_seconds` of output exist, so a tiny file of hours of compressed silence costs no more
    than `max_seconds` of audio in memory and time. A damaged stream keeps what decoded before
    the damage. Raises UnsupportedMedia (415) when nothing usable can be decoded.
    """
    if target_rate <= 0 or max_seconds <= 0:
        raise ValueError("target_rate and max_seconds must be positive")
    if not data:
        raise UnsupportedMedia(f"The upload is empty. {_SUPPORTED}")
    limit = max(1, int(max_seconds * target_rate))
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="replace",
                            container_options={"format_whitelist": _DEMUXERS})
    except (av.FFmpegError, ValueError) as exc:
        raise UnsupportedMedia(f"{_describe(data)} {_SUPPORTED}") from exc
    with container:
        stream = _first_audio_stream(container)
        samples = _decode_stream(container, stream, target_rate, limit)
    if samples.size == 0:
        raise UnsupportedMedia("The audio stream contains no decodable sound.")
    return samples


def _describe(data: bytes) -> str:
    """Say what an unreadable upload looks like, so the user knows what they sent by mistake."""
    for signature, name in _NON_AUDIO_SIGNATURES:
        if data.startswith(signature):
            return f"The upload is {name}, not audio."
    for offset, signature, name in _AUDIO_SIGNATURES:
        if data[offset:offset + len(signature)] == signature:
            return f"The upload looks like {name} file but could not be read (damaged or unsupported)."
    head = data[:512]
    if head.isascii() and all(byte >= 32 or byte in b"\t\n\r" for byte in head):
        return "The upload is text, not audio."
    return "The upload is not in a recognised audio format."


def _first_audio_stream(container: av.container.InputContainer) -> av.AudioStream:
    if not container.streams.audio:
        kinds = sorted({stream.type for stream in container.streams}) or ["no streams"]
        raise UnsupportedMedia(f"The {container.format.name.split(',')[0]} file has no audio "
                               f"stream (found: {', '.join(kinds)}). {_SUPPORTED}")
    stream = container.streams.audio[0]
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
    return values.mean(axis=0).astype(np.float32)


def _samples(frame: av.AudioFrame) -> np.ndarray:
    return frame.to_ndarray().reshape(-1).copy()


# --- reference preparation ---------------------------------------------------------------------

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


# --- output ------------------------------------------------------------------------------------


def encode_wav(samples: np.ndarray, rate: int) -> bytes:
    """Encode mono float samples as a 16-bit PCM WAV file (values outside [-1, 1] are clipped)."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    audio = np.nan_to_num(np.asarray(samples, dtype=np.float64).reshape(-1))
    pcm = np.rint(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.tobytes())
    return buffer.getvalue()


def wav_data_uri(wav: bytes) -> str:
    """Wrap WAV bytes in the `data:audio/wav;base64,...` URI the frontend plays."""
    return "data:audio/wav;base64," + base64.b64encode(wav).decode("ascii")


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the whole new one, never a part.

    The temporary file lives in the same directory (os.replace is only atomic within one file
    system) and is removed on any failure; the error, ENOSPC included, propagates unchanged.
    The file is created owner-only (mkstemp's 0600): voice recordings are personal data.
    """
    path = Path(path)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Persist the rename itself; best effort, since some file systems refuse directory fsync."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        log.debug("could not fsync directory %s: %s", directory, exc)
    finally:
        os.close(fd)
