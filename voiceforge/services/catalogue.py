"""The voice catalogue: one lookup from any voice id (cloned, built-in, alias) to what the engine needs."""

from __future__ import annotations

import logging
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from flask import has_app_context

from voiceforge import metrics
from voiceforge.errors import Conflict, NotFound, ServiceUnavailable
from voiceforge.models import Voice, VoiceKind, VoiceStatus
from voiceforge.services import voices
from voiceforge.services.engine import Engine, Latents, first_line
from voiceforge.services.storage import missing_data_dir
from voiceforge.services.voices import BUILTIN_PREFIX, slugify
from voiceforge.settings import Settings

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class VoiceHandle:
    """What speaking with one voice needs: its latents, its language and which GPT weights speak it."""

    voice_id: str
    latents: Latents
    language: str | None  # None for built-in speakers: the request's or the server's language applies
    weights: str | None = None  # a fine-tuned voice's GPT weights file; None: the checkpoint's own


@dataclass(frozen=True)
class BuiltinVoice:
    """A speaker shipped inside the XTTS checkpoint (or an alias of one); shaped like a Voice row."""

    id: str
    name: str
    speaker: str  # the checkpoint speaker that actually speaks for this id
    language: str | None = None
    kind: VoiceKind = VoiceKind.builtin
    status: VoiceStatus = VoiceStatus.ready
    error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


def builtin_id(speaker: str) -> str:
    """The voice id of a checkpoint speaker: `default-<slug>` (`Ana Florence` -> `default-ana-florence`)."""
    return BUILTIN_PREFIX + slugify(speaker, 64)


class LatentCache:
    """A small LRU of persisted voice latents, so a voice's file is read once, not per request.

    Keyed by the file and the voice row's version: another instance sharing the registry may change
    a voice (re-enrol, fine-tune) and rewrite its file in place; the row's new version misses here.
    """

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._items: OrderedDict[tuple[str, int | None], Latents] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, version: int | None = None,
            check: Callable[[Latents], None] | None = None) -> Latents:
        """The latents of a file, read on a miss; `check` (raising ValueError) runs once, before caching."""
        key = (str(path), version)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                metrics.record_cache("latents", hit=True)
                return self._items[key]
        metrics.record_cache("latents", hit=False)
        latents = Latents.load(path)
        if check is not None:
            check(latents)
        with self._lock:
            self._items[key] = latents
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return latents


class VoiceCatalogue:
    """Resolves voice ids for speaking (`handle`) and for showing (`describe`, `builtin_voices`).

    Built-in ids: `default-<speaker slug>` for each checkpoint speaker, the configured aliases, and
    any other `default-…` id, which speaks with the default speaker. When an alias or the default
    speaker names a speaker the checkpoint lacks, the fallback is deterministic: the default speaker
    if the checkpoint has it, else the checkpoint's first speaker in alphabetical order; one
    warning is logged per missing name.
    """

    def __init__(self, settings: Settings, engine: Engine, latent_cache: LatentCache) -> None:
        self.settings = settings
        self.engine = engine
        self.latent_cache = latent_cache
        self._warned: set[str] = set()
        self._warned_lock = threading.Lock()

    # -- speaking ---------------------------------------------------------------------------------
    def handle(self, voice_id: str) -> VoiceHandle:
        """The handle of any voice id; 404 unknown, 409 not ready or damaged, 503 without a model."""
        if voice_id.startswith(BUILTIN_PREFIX):
            speaker = self.speaker_for(voice_id, self.engine.speaker_names(load=True))
            latents = self.engine.speaker_latents(speaker) if speaker else None
            if latents is None:
                raise NotFound(f"This model has no built-in speakers; {voice_id[:80]!r} cannot speak. "
                               "Clone a voice with /api/train-voice.")
            return VoiceHandle(voice_id, latents, None)
        voice = voices.find_voice(voice_id)
        if voice is None:
            raise NotFound(f"Voice {voice_id[:80]!r} not found.")
        if voice.status != VoiceStatus.ready or not voice.latents_path:
            raise Conflict(f"Voice {voice_id!r} is not ready (status: {voice.status.value}).",
                           extra={"status": voice.status.value})
        try:
            # check_latents: a file can load and still not fit this model (shapes, NaN); refused here, it
            # fails its own request instead of failing in the decoder next to other requests' rows.
            latents = self.latent_cache.get(self.settings.data_dir / voice.latents_path, voice.version,
                                            check=self.engine.check_latents)
        except FileNotFoundError:
            if not voices.still_exists(voice):  # deleted since it was read: the files went after the row
                raise NotFound(f"Voice {voice_id[:80]!r} not found.") from None
            if not self.settings.data_dir.is_dir():
                raise missing_data_dir(self.settings.data_dir) from None
            raise Conflict(f"Voice {voice_id!r} has lost its files; re-enrol it.") from None
        except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
            # What torch.load raises for a truncated or overwritten file, and check_latents for one that
            # does not fit: the voice cannot speak, the server is fine. The operator's log says which file.
            log.error("voice %s: %s cannot be used (%s)", voice.id, voice.latents_path, first_line(error))
            raise Conflict(f"Voice {voice_id!r} has a damaged latents file; re-enrol it.") from None
        weights = str(self.settings.data_dir / voice.weights_path) if voice.weights_path else None
        return VoiceHandle(voice.id, latents, voice.language, weights)

    def vanished(self, handle: VoiceHandle) -> NotFound | Conflict | ServiceUnavailable:
        """The error for a voice whose files went while a request spoke with it (a fine-tuned voice's
        GPT weights are read by the decoder, after handle()): 404 if it was deleted, else 409.

        Outside an application context (a stream already sending) the registry cannot be asked, and
        the error only ends the stream: 404."""
        if not has_app_context():
            return NotFound(f"Voice {handle.voice_id[:80]!r} not found.")
        voice = voices.find_voice(handle.voice_id)
        if voice is None or not voices.still_exists(voice):
            return NotFound(f"Voice {handle.voice_id[:80]!r} not found.")
        if not self.settings.data_dir.is_dir():
            return missing_data_dir(self.settings.data_dir)
        return Conflict(f"Voice {handle.voice_id!r} has lost its files; re-enrol it.")

    def speaker_for(self, voice_id: str, speakers: list[str]) -> str | None:
        """The checkpoint speaker a built-in id speaks with (None when the checkpoint has none)."""
        if not speakers:
            return None
        by_id = {builtin_id(name): name for name in speakers}
        if voice_id in by_id:
            return by_id[voice_id]
        wanted = self.settings.voice_aliases.get(voice_id, self.settings.default_speaker)
        if wanted in speakers:
            return wanted
        fallback = (self.settings.default_speaker if self.settings.default_speaker in speakers
                    else sorted(speakers)[0])
        self._warn_once(wanted, f"speaker {wanted!r} (for {voice_id!r}) is not in this model; "
                                f"{fallback!r} speaks instead (set VOICEFORGE_VOICE_ALIASES or "
                                "VOICEFORGE_DEFAULT_SPEAKER to one of its speakers)")
        return fallback

    def _warn_once(self, key: str, message: str) -> None:
        with self._warned_lock:
            if key in self._warned:
                return
            self._warned.add(key)
        log.warning(message)

    # -- showing ----------------------------------------------------------------------------------
    def builtin_voices(self) -> list[BuiltinVoice]:
        """Aliases, then the checkpoint's speakers, as GET /api/voices lists them (empty without a model).

        Never loads the model: the speaker names come from the checkpoint's speakers file.
        """
        speakers = self.engine.speaker_names(load=False)
        if not speakers:
            return []
        aliases = [BuiltinVoice(id=alias, name=f"{speaker} ({alias})", speaker=speaker)
                   for alias in self.settings.voice_aliases
                   if (speaker := self.speaker_for(alias, speakers))]
        return aliases + [BuiltinVoice(id=builtin_id(name), name=name, speaker=name) for name in speakers]

    def describe(self, voice_id: str) -> Voice | BuiltinVoice:
        """A registry voice, or a built-in one: a listed speaker or alias, or any other `default-…` id,
        shown with the speaker that speaks for it as /api/tts would (it 404'd while /api/tts spoke it).
        404 for an unknown registry id, or a built-in one where the checkpoint has no speakers."""
        if voice_id.startswith(BUILTIN_PREFIX):
            for voice in self.builtin_voices():
                if voice.id == voice_id:
                    return voice
            speaker = self.speaker_for(voice_id, self.engine.speaker_names(load=False))
            if speaker is None:
                raise NotFound(f"Voice {voice_id[:80]!r} not found: this model has no built-in speakers.")
            return BuiltinVoice(id=voice_id, name=f"{speaker} ({voice_id})", speaker=speaker)
        return voices.get_voice(voice_id)
