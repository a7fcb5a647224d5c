"""Speech synthesis: resolve the voice, prepare the text, map variability, run the engine, join."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from flask import current_app

from voiceforge.errors import Conflict, NotFound
from voiceforge.models import Voice, VoiceStatus
from voiceforge.services import voices
from voiceforge.services.audio import encode_wav
from voiceforge.services.engine import OUTPUT_RATE, Engine, Latents, Sampling, get_engine
from voiceforge.services.languages import normalise_language
from voiceforge.services.text import clean_text, split_text
from voiceforge.services.voices import BUILTIN_PREFIX, BuiltinVoice, slugify

log = logging.getLogger(__name__)


def sampling_for(variability: float) -> Sampling:
    """Map variability 0..1 monotonically onto XTTS sampling.

    0 -> greedy decoding (identical requests give identical audio); 0.5 -> XTTS defaults
    (temperature 0.75, top-p 0.85); 1 -> temperature 1.0, top-p 0.95. Linear in between.
    """
    if variability <= 0:
        # Neutral values: transformers warns about sampling flags that greedy decoding ignores.
        return Sampling(greedy=True, temperature=1.0, top_p=1.0)
    if variability <= 0.5:
        share = variability / 0.5
        return Sampling(greedy=False, temperature=max(0.05, 0.75 * share), top_p=0.5 + 0.35 * share)
    share = (variability - 0.5) / 0.5
    return Sampling(greedy=False, temperature=0.75 + 0.25 * share, top_p=0.85 + 0.10 * share)


class LatentCache:
    """A small LRU of persisted voice latents, so a voice's file is read once, not per request."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._items: OrderedDict[str, Latents] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> Latents:
        key = str(path)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        latents = Latents.load(path)
        with self._lock:
            self._items[key] = latents
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return latents


_caches: dict[int, LatentCache] = {}


def latent_cache() -> LatentCache:
    size = int(current_app.config["LATENT_CACHE_SIZE"])
    return _caches.setdefault(size, LatentCache(size))


def resolve_voice(voice_id: str, engine: Engine) -> tuple[Latents, str | None]:
    """The latents and language of a voice id: a registry voice, a built-in speaker or an alias."""
    if voice_id.startswith(BUILTIN_PREFIX):
        return builtin_latents(voice_id, engine), None
    voice = voices.find_voice(voice_id)
    if voice is None:
        raise NotFound(f"Voice {voice_id[:80]!r} not found.")
    if voice.status != VoiceStatus.ready or not voice.latents_path:
        raise Conflict(f"Voice {voice_id!r} is not ready (status: {voice.status.value}).",
                       extra={"status": voice.status.value})
    path = Path(current_app.config["DATA_DIR"]) / voice.latents_path
    try:
        return latent_cache().get(path), voice.language
    except FileNotFoundError:
        raise Conflict(f"Voice {voice_id!r} has lost its files; re-enrol it.") from None


def builtin_latents(voice_id: str, engine: Engine) -> Latents:
    """`default-<speaker slug>`, a configured alias, or the default speaker for any other `default-…`."""
    config = current_app.config
    speaker = config["VOICE_ALIASES"].get(voice_id)
    if speaker is None:
        by_slug = {BUILTIN_PREFIX + slugify(name, 64): name for name in engine.builtin_speakers()}
        speaker = by_slug.get(voice_id, config["DEFAULT_SPEAKER"])
    latents = engine.speaker_latents(speaker)
    if latents is None:
        raise NotFound(f"Built-in speaker {speaker!r} (for {voice_id!r}) is not in this model.")
    return latents


def builtin_voices() -> list[BuiltinVoice]:
    """Built-in speakers and aliases, as listed by GET /api/voices (empty until a model is known)."""
    names = get_engine().builtin_speakers()
    if not names:
        return []
    listed = [BuiltinVoice(id=BUILTIN_PREFIX + slugify(name, 64), name=name) for name in names]
    aliases = [BuiltinVoice(id=alias, name=f"{speaker} ({alias})")
               for alias, speaker in current_app.config["VOICE_ALIASES"].items() if speaker in names]
    return aliases + listed


def find_voice(voice_id: str) -> Voice | BuiltinVoice:
    """A registry voice, or a built-in speaker or alias as listed by GET /api/voices; 404 otherwise."""
    if voice_id.startswith(BUILTIN_PREFIX):
        for voice in builtin_voices():
            if voice.id == voice_id:
                return voice
        raise NotFound(f"Voice {voice_id[:80]!r} not found.")
    return voices.get_voice(voice_id)


def synthesize(text: str, voice_id: str, *, speed: float, variability: float,
               language: str | None) -> bytes:
    """The whole /api/tts job: returns a mono 16-bit 24 kHz WAV."""
    config = current_app.config
    cleaned = clean_text(text, max_chars=int(config["MAX_TEXT_CHARS"]))
    requested = normalise_language(language) if language else None
    engine = get_engine()
    latents, voice_language = resolve_voice(voice_id, engine)
    lang = requested or voice_language or normalise_language(config["DEFAULT_LANGUAGE"])
    sampling = sampling_for(variability)
    chunks = split_text(cleaned, lang)
    pause = np.zeros(int(OUTPUT_RATE * config["SENTENCE_PAUSE_MS"] / 1000), dtype=np.float32)
    pieces: list[np.ndarray] = []
    with engine.reserve():
        for index, chunk in enumerate(chunks):
            if index:
                pieces.append(pause)
            pieces.append(engine.synthesize(chunk, lang, latents, sampling, speed))
    log.info("synthesised %d chunk(s), %d chars, voice %s, %s", len(chunks), len(cleaned), voice_id, lang)
    return encode_wav(np.concatenate(pieces), OUTPUT_RATE)
