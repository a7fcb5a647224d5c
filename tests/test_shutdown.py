"""Graceful shutdown behind a real gunicorn: SIGTERM lets a request in flight finish.

That a running fine-tuning job checkpoints and gives its lease back on SIGTERM is tested where jobs
run for real: tests/test_finetune_gunicorn.py (the whole service stopped mid-job, then resumed) and
tests/test_celery_backend.py (a Celery worker stopped warmly).
"""

from __future__ import annotations

import base64
import io
import threading
import time
import wave
from pathlib import Path

import pytest
import requests

from tests.support.server import start_server

pytestmark = pytest.mark.slow

SENTENCES = " ".join(f"This is sentence number {i} of a long request." for i in range(12))


def test_a_request_in_flight_when_sigterm_arrives_completes(tmp_path: Path, checkpoint_dir: Path) -> None:
    server = start_server(tmp_path, checkpoint_dir, VOICEFORGE_JOB_RUNNER="false")
    try:
        warm = server.post("/api/tts", {"text": "Load the model first.", "voiceId": "default-female"})
        assert warm.status_code == 200
        answers: list[tuple[requests.Response, float]] = []

        def ask() -> None:
            response = server.post("/api/tts", {"text": SENTENCES, "voiceId": "default-female",
                                                "variability": 0})
            answers.append((response, time.monotonic()))

        slow = threading.Thread(target=ask)
        slow.start()
        time.sleep(1.0)  # the request is being synthesised (seconds on this CPU)
        assert slow.is_alive() and not answers
        signalled = time.monotonic()
        server.process.terminate()  # SIGTERM to the master, as `docker stop` or systemd send it
        slow.join(60)
        assert server.process.wait(60) == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
    [(answer, answered)] = answers
    assert answered > signalled  # it was still being served when the signal came
    assert answer.status_code == 200, answer.text
    encoded = answer.json()["audioDataUri"].split(",", 1)[1]
    with wave.open(io.BytesIO(base64.b64decode(encoded))) as audio:
        assert audio.getnframes() == len(base64.b64decode(encoded)[44:]) // 2 > 0  # a whole WAV
    log = server.log.read_text()
    assert "Handling signal: term" in log and "route=/api/tts status=200" in log
