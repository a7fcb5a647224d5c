"""Fine-tuning behind a real gunicorn: its master's job runner, kill -9 of the runner, a full restart."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import requests

from tests.support.finetune import TEXTS, build_training_checkpoint, recording
from tests.support.server import Server, runner_pids, start_server, stop_server

pytestmark = pytest.mark.slow  # real gunicorn processes, real training

SETTINGS = {"VOICEFORGE_FINETUNE_LEARNING_RATE": "1e-3", "VOICEFORGE_FINETUNE_MIN_SPEECH_SECONDS": "10",
            "VOICEFORGE_JOB_LEASE_SECONDS": "3", "VOICEFORGE_FINETUNE_SAVE_STEPS": "2"}


def job(server: Server, job_id: str) -> dict:
    return requests.get(f"{server.url}/api/jobs/{job_id}", timeout=10).json()


def wait(server: Server, job_id: str, done, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        current = job(server, job_id)
        if done(current) or time.monotonic() > deadline:
            return current
        time.sleep(0.3)


def test_a_job_survives_kill_minus_9_of_its_runner_and_a_restart_of_the_service(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    checkpoint = build_training_checkpoint(tmp_path_factory.mktemp("ft") / "xtts")
    server = start_server(tmp_path, checkpoint, **SETTINGS)
    try:
        body = {"modelName": "Survivor", "audioDataUri": recording(4.0, 0), "transcript": TEXTS[0],
                "fineTune": True, "epochs": 12,
                "samples": [{"audioDataUri": recording(4.0, 10 + i), "text": TEXTS[i]} for i in range(6)]}
        queued = requests.post(f"{server.url}/api/train-voice", json=body, timeout=120)
        assert queued.status_code == 202, queued.text
        job_id, voice_id = queued.json()["jobId"], queued.json()["modelId"]
        hello = {"text": "Hello there.", "voiceId": voice_id, "variability": 0}
        zero_shot = requests.post(f"{server.url}/api/tts", json=hello, timeout=120).json()["audioDataUri"]

        # kill -9 the runner once a checkpoint exists (every 2 steps): the master starts another,
        # which claims the job when its lease expires and resumes from that checkpoint.
        before = wait(server, job_id, lambda j: j["step"] >= 4)
        assert before["state"] == "running" and before["attempts"] == 1, before
        [runner] = runner_pids(server.process.pid)
        os.kill(runner, signal.SIGKILL)
        resumed = wait(server, job_id, lambda j: j["attempts"] == 2 and j["state"] == "running")
        assert resumed["attempts"] == 2, resumed
        assert runner_pids(server.process.pid) and runner not in runner_pids(server.process.pid)

        # Then stop the whole service (SIGTERM) mid-job and start it again on the same data.
        wait(server, job_id, lambda j: j["step"] > before["step"])
        stop_server(server)
        server = start_server(tmp_path, checkpoint, port=int(server.url.rsplit(":", 1)[1]), **SETTINGS)
        done = wait(server, job_id, lambda j: j["state"] in ("succeeded", "failed", "cancelled"))
        assert done["state"] == "succeeded", done
        assert done["step"] == done["steps"]
        log = server.log.read_text()
        assert log.count("training resumed from checkpoint") >= 2, log[-3000:]
        assert "given back for another runner to resume" in log
        # SIGTERM let the trainer finish its step and save it: the restart trained nothing twice.
        assert "training stopped with a checkpoint of every step done" in log, log[-3000:]
        voice = requests.get(f"{server.url}/api/voices/{voice_id}", timeout=10).json()
        assert voice["kind"] == "finetuned"
        tuned = [requests.post(f"{server.url}/api/tts", json=hello, timeout=120).json()["audioDataUri"]
                 for _ in range(2)]
        assert tuned[0] == tuned[1] != zero_shot  # its own weights now, deterministically
    finally:
        stop_server(server)
