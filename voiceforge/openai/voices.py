"""OpenAI voice names and the voice a /v1 request names: mapped onto our voice ids."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from voiceforge.models import VoiceStatus
from voiceforge.openai.errors import InvalidRequest
from voiceforge.runtime import Runtime
from voiceforge.services import voices


def resolve_voice(value: Any, table: Mapping[str, str]) -> str:
    """Our voice id for `voice`: a string or `{"id": ...}`, either an OpenAI name or one of our ids."""
    if isinstance(value, Mapping):
        value = value.get("id")
        if not isinstance(value, str) or not value:
            raise InvalidRequest("A voice object needs a non-empty string 'id'.", param="voice")
    if not isinstance(value, str) or not value:
        raise InvalidRequest("'voice' must be a voice name or id, or an object {\"id\": ...}.",
                             param="voice")
    return table.get(value, value)


def voice_list(runtime: Runtime) -> list[dict[str, str]]:
    """GET /v1/audio/voices: the OpenAI names (with the voice each speaks as), then every voice we have."""
    mapped = [{"id": name, "name": f"{name} (speaks as {voice_id})"}
              for name, voice_id in runtime.settings.openai_voices.items()]
    # Only ready cloned voices: a pending or failed one cannot speak yet.
    cloned = [{"id": voice.id, "name": voice.name} for voice in voices.list_voices()
              if voice.status == VoiceStatus.ready]
    builtin = [{"id": voice.id, "name": voice.name} for voice in runtime.catalogue.builtin_voices()]
    return mapped + cloned + builtin
