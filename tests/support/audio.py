"""Build test audio in memory with PyAV: speech-like signals encoded the way browsers upload them."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np


@dataclass(frozen=True)
class AudioFormat:
    """How one upload format is produced: container, encoder, the browser's MIME type."""

    container: str
    codec: str
    mime: str
    rate: int | None = None  # None: keep the caller's rate; otherwise the codec needs this one
    layout: str = "mono"
    container_options: tuple[tuple[str, str], ...] = ()
    codec_options: tuple[tuple[str, str], ...] = ()


# The MIME types are what browsers put in the data URI: Chrome/Edge MediaRecorder gives
# webm/opus, Firefox ogg/opus, Safari a fragmented mp4 with AAC, file pickers the rest.
FORMATS: dict[str, AudioFormat] = {
    "wav": AudioFormat("wav", "pcm_s16le", "audio/wav"),
    "mp3": AudioFormat("mp3", "libmp3lame", "audio/mpeg"),
    "ogg/opus": AudioFormat("ogg", "libopus", "audio/ogg;codecs=opus", rate=48000),
    # The bundled FFmpeg has no libvorbis, only FFmpeg's own encoder: experimental and stereo-only.
    "ogg/vorbis": AudioFormat("ogg", "vorbis", "audio/ogg", layout="stereo",
                              codec_options=(("strict", "experimental"),)),
    "webm/opus": AudioFormat("webm", "libopus", "audio/webm;codecs=opus", rate=48000),
    "m4a/aac": AudioFormat("mp4", "aac", "audio/mp4",
                           container_options=(("movflags", "frag_keyframe+empty_moov"),)),
    "flac": AudioFormat("flac", "flac", "audio/flac"),
}


def encode_audio(samples: np.ndarray, rate: int, fmt: str) -> tuple[bytes, str]:
    """Encode mono float samples in [-1, 1] as `fmt` (a key of FORMATS); return bytes and MIME type."""
    spec = FORMATS[fmt]
    out = io.BytesIO()
    with av.open(out, "w", format=spec.container,
                 container_options=dict(spec.container_options)) as container:
        stream = container.add_stream(spec.codec, rate=spec.rate or rate, layout=spec.layout)
        stream.codec_context.options = dict(spec.codec_options)
        stream.codec_context.open()  # opened early so frame_size and format are known
        frame_size = stream.codec_context.frame_size or 4096
        resampler = av.AudioResampler(format=stream.codec_context.format, layout=spec.layout,
                                      rate=stream.codec_context.sample_rate,
                                      frame_size=frame_size)
        for frame in _float_frames(samples, rate):
            for converted in resampler.resample(frame):
                container.mux(stream.encode(converted))
        for converted in resampler.resample(None):
            container.mux(stream.encode(converted))
        container.mux(stream.encode(None))
    return out.getvalue(), spec.mime


def _float_frames(samples: np.ndarray, rate: int, chunk: int = 65536) -> Iterator[av.AudioFrame]:
    """Yield the samples as packed-float mono frames, in chunks so long signals stay cheap."""
    data = np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1)
    for start in range(0, data.shape[1], chunk):
        frame = av.AudioFrame.from_ndarray(data[:, start:start + chunk], format="flt",
                                           layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        yield frame


def speech_like(seconds: float, rate: int, *, f0: float = 130.0, seed: int = 0) -> np.ndarray:
    """A voiced, speech-like signal: a wobbling pitch with decaying harmonics, in syllable bursts.

    Syllables come at about 4 per second with short dips between them, the way the energy of
    real speech moves, so silence trimming and speech-duration checks see it as speech.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    pitch = f0 * (1.0 + 0.06 * np.sin(2 * np.pi * 0.7 * t) + 0.03 * np.sin(2 * np.pi * 3.1 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 16) if k * f0 < rate / 2.2)
    syllables = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t - np.pi / 2) ** 2
    breath = 0.01 * rng.standard_normal(t.size)
    signal = voice * syllables + breath
    peak = float(np.max(np.abs(signal))) if signal.size else 1.0
    return (0.7 * signal / peak).astype(np.float32)


def data_uri(data: bytes, mime: str) -> str:
    """The `data:<mime>;base64,<data>` string a browser's FileReader.readAsDataURL produces."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def compressed_silence(seconds: float) -> bytes:
    """An Ogg/Opus file of `seconds` of digital silence, built in well under a second.

    Encoding an hour would take long, so one silent 120 ms Opus packet (a few bytes) is muxed
    over and over with advancing timestamps: a valid file, and a decompression bomb of about
    60 bytes per second of audio that a decoder must refuse to expand without bound.
    """
    template = _silent_opus_packet()
    out = io.BytesIO()
    with av.open(out, "w", format="ogg") as container:
        stream = container.add_stream_from_template(template.stream)
        for index in range(int(seconds * 48000 // template.duration)):
            packet = av.Packet(bytes(template))
            packet.stream = stream
            packet.time_base = template.time_base
            packet.pts = packet.dts = index * template.duration
            packet.duration = template.duration
            container.mux(packet)
    return out.getvalue()


def _silent_opus_packet() -> av.Packet:
    source = io.BytesIO()
    with av.open(source, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48000, layout="mono")
        stream.codec_context.options = {"frame_duration": "120"}
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 48000), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = 48000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    source.seek(0)
    container = av.open(source)
    packets = [packet for packet in container.demux(container.streams.audio[0]) if packet.size]
    # A middle packet: the first carries encoder warm-up, the last the end-of-stream trim.
    return packets[len(packets) // 2]


VOICE_RATE = 22050
# (Formant frequencies in Hz of a, i, u, e, o, ɔ: voices the VAD takes for speech.)
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480),
           (570, 840, 2410), (640, 1190, 2390))


def voice(seconds: float, *, f0: float = 120.0, seed: int = 0, rate: int = VOICE_RATE) -> np.ndarray:
    """A phrase Silero VAD hears as speech: `speech_like`'s pitch and syllable rhythm alone read
    as a hum to it, so each syllable is a pulse train through a random vowel's formants, with
    fricative noise between some of them. What the service hears as speech when it enrols a voice."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    size = round(seconds * rate)
    hum = speech_like(seconds, rate, f0=f0, seed=seed)  # keeps its breath noise under the vowels
    t = np.arange(size) / rate
    wobble = 0.1 * np.sin(2 * np.pi * 0.5 * t + rng.uniform(0, 6)) + 0.04 * np.sin(2 * np.pi * 3.3 * t)
    pitch = f0 * (1 + wobble)
    pulses = lfilter([1.0], [1.0, -0.97], np.diff(2 * (np.cumsum(pitch) / rate % 1.0) - 1, prepend=0.0))
    out = np.zeros(size)
    position = 0
    while position < size:
        length = int(rng.uniform(0.15, 0.3) * rate)
        part = slice(position, min(size, position + length))
        for frequency, bandwidth in zip(_VOWELS[rng.integers(len(_VOWELS))], (80, 100, 140), strict=True):
            radius, angle = np.exp(-np.pi * bandwidth / rate), 2 * np.pi * frequency / rate
            out[part] += lfilter([1 - radius], [1, -2 * radius * np.cos(angle), radius**2], pulses[part])
        out[part] *= np.sin(np.linspace(0, np.pi, out[part].size)) ** 0.5
        hiss = int(0.05 * rate)
        if position + length + hiss < size and rng.random() < 0.6:
            noise = lfilter([1, -0.9], [1], rng.standard_normal(hiss))
            out[position + length:position + length + hiss] += 0.05 * noise
            length += hiss
        position += length
    out = out / np.max(np.abs(out)) + 0.02 * hum
    return (0.6 * out / np.max(np.abs(out))).astype(np.float32)


def phrases(*parts: float, seed: int = 0) -> np.ndarray:
    """Alternating pause and phrase lengths in seconds (pause, phrase, pause, ...) as one signal."""
    pieces = []
    for index, seconds in enumerate(parts):
        if index % 2:
            pieces.append(voice(seconds, f0=110.0 + 10 * (index % 5), seed=seed + index))
        else:
            pieces.append(np.zeros(round(seconds * VOICE_RATE), np.float32))
    return np.concatenate(pieces)


def decode_output(data: bytes, fmt: str, *, pcm_rate: int = 24000) -> tuple[int, np.ndarray]:
    """(sample rate, mono float samples) of the service's encoded audio, through PyAV.

    `pcm` has no header: it is read as 16-bit little-endian samples at `pcm_rate`.
    """
    if fmt == "pcm":
        return pcm_rate, np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768
    with av.open(io.BytesIO(data)) as container:
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
        rate = container.streams.audio[0].rate
    return rate, np.concatenate(frames)
