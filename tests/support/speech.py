"""Enrolling and speaking through the API in tests, and recording the chunks the engine is handed."""

from __future__ import annotations

import pytest

from tests.support.audio import data_uri, encode_audio, voice
from voiceforge.services.engine import Engine


def recording(fmt: str = "wav", seconds: float = 4.0) -> str:
    """A data URI of `seconds` of a synthetic voice at 48 kHz, encoded as `fmt`."""
    data, mime = encode_audio(voice(seconds, rate=48000), 48000, fmt)
    return data_uri(data, mime)


def enrol(client, name: str = "Test Voice", fmt: str = "wav", **extra: object) -> str:
    """Clone a voice through POST /api/train-voice; its id."""
    response = client.post("/api/train-voice", json={"modelName": name, "audioDataUri": recording(fmt),
                                                     **extra})
    assert response.status_code == 200, response.json
    assert response.json["trainingStatus"] == "completed"
    return response.json["modelId"]


def speak(client, voice_id: str, text: str = "Hello there, this is a test.", **extra: object):
    """POST /api/tts with `text` in `voice_id` (variability 0: greedy), plus any `extra` fields."""
    return client.post("/api/tts", json={"text": text, "voiceId": voice_id, "variability": 0, **extra})


def spoken_chunks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The chunks of text handed to the decoder from now on."""
    spoken: list[str] = []
    original = Engine.speak

    def recording_speak(self: Engine, texts: list[str], *args: object, **kwargs: object) -> list:
        spoken.extend(texts)
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(Engine, "speak", recording_speak)
    return spoken
