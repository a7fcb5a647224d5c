"""Shutdown behind a real gunicorn: SIGTERM lets a request in flight finish; the job runner follows a
master killed with kill -9 instead of outliving it.

That a running fine-tuning job checkpoints and gives its lease back on SIGTERM is tested where jobs
run for real: tests/test_finetune_gunicorn.py (the whole service stopped mid-job, then resumed) and
tests/test_celery_backend.py (a Celery worker stopped warmly).
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import sqlite3
import threading
import time
import wave
from pathlib import Path

import pytest
import requests

from tests.support.finetune import TEXTS, build_training_checkpoint, recording
from tests.support.server import runner_pids, start_server

pytestmark = pytest.mark.slow

SENTENCES = " ".join(f"This is sentence number {i} of a long request." for i in range(48))


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


def job_row(database: Path, job_id: str) -> tuple[str, str]:
    """A job's state and message, straight from the SQLite database."""
    with contextlib.closing(sqlite3.connect(database)) as connection:
        return connection.execute("SELECT state, message FROM jobs WHERE id = ?", (job_id,)).fetchone()


def running(pid: int) -> bool:
    """Whether a process that is not our child still runs (a zombie nobody reaped has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_job_runner_gives_its_job_back_and_exits_when_its_master_is_killed(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    checkpoint = build_training_checkpoint(tmp_path_factory.mktemp("ft") / "xtts")
    server = start_server(tmp_path, checkpoint, VOICEFORGE_FINETUNE_LEARNING_RATE="1e-3",
                          VOICEFORGE_FINETUNE_MIN_SPEECH_SECONDS="10", VOICEFORGE_JOB_LEASE_SECONDS="3",
                          VOICEFORGE_FINETUNE_SAVE_STEPS="2")
    master = server.process.pid
    try:
        body = {"modelName": "Orphan", "audioDataUri": recording(4.0, 0), "transcript": TEXTS[0],
                "fineTune": True, "epochs": 12,
                "samples": [{"audioDataUri": recording(4.0, 10 + i), "text": TEXTS[i]} for i in range(6)]}
        queued = server.post("/api/train-voice", body)
        assert queued.status_code == 202, queued.text
        job_id = queued.json()["jobId"]
        deadline = time.monotonic() + 240
        while requests.get(f"{server.url}/api/jobs/{job_id}", timeout=10).json()["step"] < 2:
            assert time.monotonic() < deadline, "the job did not start training"
            time.sleep(0.3)
        [runner] = runner_pids(master)

        os.kill(master, signal.SIGKILL)  # the master alone, not its process group
        server.process.wait(10)
        deadline = time.monotonic() + 30
        while running(runner) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not running(runner), "the job runner outlived its gunicorn master"
        # Given back as on SIGTERM (the web app is gone with its master: read the database itself).
        assert job_row(tmp_path / "e2e.db", job_id) == ("queued", "Runner stopped; will resume from its "
                                                        "checkpoint."), server.log.read_text()[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(master, signal.SIGKILL)  # whatever of the service is left (before the fix: the runner)
        server.process.wait(10)
