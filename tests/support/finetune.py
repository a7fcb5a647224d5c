"""Fine-tuning test material: transcribed synthetic speech, a trainable tiny checkpoint, job helpers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from tests.support.audio import VOICE_RATE, data_uri, encode_audio, phrases
from tests.support.checkpoint import build_checkpoint

TEXTS = ["the quick brown fox jumps over the lazy dog", "she sells sea shells by the sea shore",
         "a journey of a thousand miles begins with one step", "every cloud has a silver lining",
         "actions speak louder than words today", "better late than never they said"]


def recording(seconds: float = 4.0, seed: int = 0) -> str:
    """A phrase of synthetic speech that Silero VAD hears as speech, as a WAV data URI."""
    data, mime = encode_audio(phrases(0.3, seconds, 0.3, seed=seed), VOICE_RATE, "wav")
    return data_uri(data, mime)


def samples(count: int = 6, seconds: float = 4.0) -> list[dict]:
    return [{"audioDataUri": recording(seconds, seed=10 + i), "text": TEXTS[i % len(TEXTS)]}
            for i in range(count)]


def build_training_checkpoint(directory: Path) -> Path:
    """Tiny XTTS-v2 with dvae.pth and mel_stats.pth, and room for 11 s clips (255 audio tokens)."""
    return build_checkpoint(directory, max_audio_tokens=255, training_files=True)


def enrol_with_fine_tuning(client: FlaskClient, **extra: object):
    """POST /api/train-voice with fineTune: a new voice and its queued job (4 epochs unless `extra` says)."""
    body = {"modelName": "Tuned", "audioDataUri": recording(4.0), "transcript": TEXTS[0], "fineTune": True,
            "samples": samples(), "epochs": 4, **extra}
    return client.post("/api/train-voice", json=body)


def wait_for(client: FlaskClient, job_id: str, states: set[str], timeout: float = 240) -> dict:
    """The job once it is in one of `states`, or as it is when `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json
        if job["state"] in states or time.monotonic() > deadline:
            return job
        time.sleep(0.3)


def unreachable_once(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[Exception]:
    """Make owner.name raise a database error once, as an unreachable or locked database does, then work;
    the failures still to come (empty once it has failed)."""
    from sqlalchemy.exc import OperationalError

    real = getattr(owner, name)
    failures: list[Exception] = [OperationalError("UPDATE jobs", {}, Exception("database is locked"))]

    def failing_once(*args: object, **kwargs: object) -> object:
        if failures:
            raise failures.pop()
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing_once)
    return failures
