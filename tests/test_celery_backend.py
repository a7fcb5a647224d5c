"""The Celery backend for real: redis-server, `celery worker` processes, training, kill -9 and SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text, update

from tests.support.finetune import (
    build_training_checkpoint,
    enrol_with_fine_tuning,
    recording,
    samples,
    unreachable_once,
    wait_for,
)
from tests.support.server import ROOT, free_port
from voiceforge.db import MIGRATIONS_DIR, db
from voiceforge.models import Job, JobState, utcnow

pytestmark = pytest.mark.slow  # a real redis-server and Celery worker processes, real training

pytest.importorskip("celery", reason="celery is not installed (requirements.txt pins it)")
redis = pytest.importorskip("redis", reason="the redis client is not installed (requirements.txt pins it)")

CELERY = Path(sys.executable).parent / "celery"  # the script README's `celery -A …` runs
VISIBILITY_SECONDS = 8  # Redis hands a dead worker's task to another worker after this
FINISHED = {"succeeded", "failed", "cancelled"}
# The web app and every worker share these (and the database, the data and the model directories).
SETTINGS = {"JOB_BACKEND": "celery", "JOB_RUNNER": False, "JOB_LEASE_SECONDS": 3.0,
            "CELERY_VISIBILITY_TIMEOUT": VISIBILITY_SECONDS, "FINETUNE_SAVE_STEPS": 2,
            "FINETUNE_LEARNING_RATE": 1e-3, "FINETUNE_MIN_SPEECH_SECONDS": 10.0}


@dataclass
class Worker:
    process: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_training_checkpoint(tmp_path_factory.mktemp("ft") / "xtts")


@pytest.fixture
def broker_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own on a free loopback port, saving nothing to disk."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; .ci/run does)")
    port, directory = free_port(), tmp_path / "redis"
    directory.mkdir()
    log = directory / "redis.log"
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(directory)],
                               stdout=log.open("wb"), stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"redis-server did not start: {log.read_text()}") from None
            time.sleep(0.05)
    client.close()
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)


@pytest.fixture
def celery_app(make_app: Callable[..., Flask], training_checkpoint: Path, broker_url: str) -> Flask:
    return make_app(MODEL_DIR=str(training_checkpoint), CELERY_BROKER_URL=broker_url, **SETTINGS)


@pytest.fixture
def start_worker(celery_app: Flask, tmp_path: Path) -> Iterator[Callable[[str], Worker]]:
    """Start `celery worker` processes on the web app's database, directories and broker."""
    config = celery_app.config
    shared = {"DATABASE_URL": config["DATABASE_URL"], "DATA_DIR": config["DATA_DIR"],
              "MODEL_DIR": config["MODEL_DIR"], "CELERY_BROKER_URL": config["CELERY_BROKER_URL"],
              "INSTANCE_PATH": str(tmp_path), **SETTINGS}
    # No PYTHONPATH: the worker must find the project as README's command line leaves it, with the
    # checkout on sys.path only while `celery -A` loads the app (the trainer child must still import it).
    environment = {**{key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
                   **{f"VOICEFORGE_{key}": str(value) for key, value in shared.items()}}
    workers: list[Worker] = []

    def start(name: str, log_format: str = "text", **settings: object) -> Worker:
        log = tmp_path / f"worker-{name}.log"
        # README's command line, with the `celery` script (`python -m celery` would put the checkout on
        # sys.path for good); its own process group, so kill -9 takes its pool and trainer too. JSON
        # logs: compose.yaml's, --quiet leaving out the start-up banner.
        quiet = ["--quiet"] if log_format == "json" else []
        command = [str(CELERY), *quiet, "-A", "voiceforge.jobs.celery_backend", "worker",
                   "--loglevel=INFO", "--concurrency=1", "-Q", "voiceforge", "-n", f"{name}@%h",
                   "--without-gossip", "--without-mingle", "--without-heartbeat"]
        own = {**environment, "VOICEFORGE_LOG_FORMAT": log_format,
               **{f"VOICEFORGE_{key}": str(value) for key, value in settings.items()}}
        process = subprocess.Popen(command, cwd=ROOT, env=own,
                                   stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        workers.append(Worker(process, log))
        return workers[-1]

    yield start
    for worker in workers:
        if worker.process.poll() is None:
            os.killpg(worker.process.pid, signal.SIGKILL)
            worker.process.wait(10)


def wait_until(client: FlaskClient, job_id: str, done: Callable[[dict], bool], timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json
        if done(job) or job["state"] in FINISHED or time.monotonic() > deadline:
            return job
        time.sleep(0.3)


def task_ids(worker: Worker) -> list[str]:
    """The ids of the fine-tuning tasks a worker received, from its log."""
    marker = "Task voiceforge.finetune["
    return [line.split(marker, 1)[1].split("]", 1)[0] for line in worker.text().splitlines()
            if marker in line and "received" in line]


def test_a_celery_worker_fine_tunes_the_voice(celery_app: Flask,
                                              start_worker: Callable[[str], Worker]) -> None:
    client = celery_app.test_client()
    worker = start_worker("one")
    queued = enrol_with_fine_tuning(client)
    assert queued.status_code == 202, queued.json
    job_id, voice_id = queued.json["jobId"], queued.json["modelId"]

    job = wait_for(client, job_id, FINISHED)
    assert job["state"] == "succeeded", (job, worker.text()[-4000:])
    assert job["attempts"] == 1 and job["steps"] > 0 and job["step"] == job["steps"], job
    assert client.get(f"/api/voices/{voice_id}").json["kind"] == "finetuned"
    speech = client.post("/api/tts", json={"text": "Hello there.", "voiceId": voice_id, "variability": 0})
    assert speech.status_code == 200, speech.json  # the web app speaks with the weights the worker made
    assert len(task_ids(worker)) == 1 and "succeeded in" in worker.text()


def test_a_killed_worker_s_job_comes_back_and_resumes_from_its_checkpoint(
        celery_app: Flask, start_worker: Callable[[str], Worker]) -> None:
    client = celery_app.test_client()
    first = start_worker("first")
    queued = enrol_with_fine_tuning(client, epochs=8)
    assert queued.status_code == 202, queued.json
    job_id, voice_id = queued.json["jobId"], queued.json["modelId"]
    wait_for(client, job_id, {"running"} | FINISHED)
    delivered_by = time.time()  # the task reached the first worker before its job was running

    # kill -9 the whole worker (main process, pool process, trainer) once a checkpoint exists (every 2 steps).
    before = wait_until(client, job_id, lambda j: j["step"] >= 4)
    assert before["state"] == "running" and before["attempts"] == 1, (before, first.text()[-4000:])
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait(10)

    # The task was never acknowledged: Redis hands it to the next worker once its visibility timeout has
    # passed (a new worker sweeps for such tasks as it starts), and the job's lease has expired by then.
    time.sleep(max(0.0, delivered_by + VISIBILITY_SECONDS + 1 - time.time()))
    second = start_worker("second")
    resumed = wait_until(client, job_id, lambda j: j["attempts"] == 2 and j["step"] > before["step"])
    assert resumed["state"] == "running" and resumed["attempts"] == 2, (resumed, second.text()[-4000:])
    # The same task, delivered again; the new worker's sweep may also have sent the job as a new task
    # (whichever came first claimed the job, and the other only waits for it to end).
    assert set(task_ids(first)) <= set(task_ids(second))

    # SIGTERM (docker stop, systemctl stop): the job checkpoints, is given back, and its task is sent again.
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(60) == 0, second.text()[-4000:]
    assert "training stopped with a checkpoint of every step done" in second.text(), second.text()[-4000:]
    given_back = client.get(f"/api/jobs/{job_id}").json
    assert given_back["state"] == "queued" and "resume" in given_back["message"], given_back
    third = start_worker("third")
    done = wait_for(client, job_id, FINISHED)
    assert done["state"] == "succeeded", (done, third.text()[-4000:])
    assert done["attempts"] == 2 and done["step"] == done["steps"], done  # a graceful stop costs no attempt
    for worker in (second, third):
        assert "training resumed from checkpoint" in worker.text(), worker.text()[-4000:]
    assert set(task_ids(third)) - set(task_ids(first)) - set(task_ids(second))  # sent again on SIGTERM
    assert client.get(f"/api/voices/{voice_id}").json["kind"] == "finetuned"


def test_a_killed_worker_s_job_resumes_on_a_live_worker_within_a_lease(
        celery_app: Flask, start_worker: Callable[..., Worker]) -> None:
    """Not after Redis' visibility timeout (6 h by default, here far longer than the test): a live worker
    sees the dead one's lease run out and sends the job again."""
    client = celery_app.test_client()
    hours = {"CELERY_VISIBILITY_TIMEOUT": 6 * 3600}
    first = start_worker("first", **hours)
    queued = enrol_with_fine_tuning(client, epochs=8)
    job_id = queued.json["jobId"]
    before = wait_until(client, job_id, lambda j: j["step"] >= 4)  # a checkpoint is saved every 2 steps
    assert before["state"] == "running", (before, first.text()[-4000:])
    second = start_worker("second", **hours)  # idle: the only task went to the first
    time.sleep(2)
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait(10)

    # The lease (3 s) runs out, a sweep (every 3 s) finds it, and the job is sent as a new task.
    resumed = wait_until(client, job_id, lambda j: j["attempts"] == 2)
    assert resumed["attempts"] == 2 and resumed["state"] == "running", (resumed, second.text()[-4000:])
    assert "its runner stopped renewing its lease" in second.text(), second.text()[-4000:]
    assert task_ids(second) and not set(task_ids(second)) & set(task_ids(first))
    done = wait_for(client, job_id, FINISHED)
    assert done["state"] == "succeeded" and done["attempts"] == 2, (done, second.text()[-4000:])
    assert "training resumed from checkpoint" in second.text(), second.text()[-4000:]


def test_a_worker_asked_for_json_logs_writes_json_lines(start_worker: Callable[..., Worker]) -> None:
    worker = start_worker("json", log_format="json")
    deadline = time.monotonic() + 60
    while "ready." not in worker.text() and worker.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(30) == 0, worker.text()[-4000:]
    records, plain = [], []
    for line in filter(str.strip, worker.text().splitlines()):
        try:
            records.append(json.loads(line))
        except ValueError:
            plain.append(line)
    # Celery prints its shutdown notice itself, outside logging: the one line a collector sees as text.
    assert plain == ["worker: Warm shutdown (MainProcess)"], plain
    assert any(record["logger"].startswith("celery") and "ready" in record["message"] for record in records)


def test_a_task_whose_job_runs_under_a_live_lease_waits_for_that_lease(
        celery_app: Flask, start_worker: Callable[[str], Worker]) -> None:
    client = celery_app.test_client()
    queued = enrol_with_fine_tuning(client)  # no worker yet: its task waits in Redis
    job_id = queued.json["jobId"]
    with celery_app.app_context():
        # As if another worker ran it and had just died: its lease has 15 s left.
        db.session.execute(update(Job).where(Job.id == job_id).values(
            state=JobState.running, lease_owner="elsewhere:1", attempts=1,
            lease_expires_at=utcnow() + timedelta(seconds=15)))
        db.session.commit()
    worker = start_worker("patient")
    done = wait_for(client, job_id, FINISHED)
    assert done["state"] == "succeeded" and done["attempts"] == 2, (done, worker.text()[-4000:])
    # It looked again every lease period (3 s), more often than Celery's default limit of 3 retries.
    assert worker.text().count("retry: Retry in 3") >= 4, worker.text()[-4000:]


def test_a_worker_on_a_database_not_yet_migrated_waits_for_the_migration(
        celery_app: Flask, start_worker: Callable[[str], Worker]) -> None:
    """A worker whose code is newer than the database's schema (started before `flask db upgrade`)
    leaves the job queued, saying why, and runs it once the database is migrated."""
    client = celery_app.test_client()
    job_id = enrol_with_fine_tuning(client).json["jobId"]  # no worker yet: its task waits in Redis
    with celery_app.app_context():
        head = db.session.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        previous = ScriptDirectory(MIGRATIONS_DIR).get_revision(head).down_revision
        set_revision = text("UPDATE alembic_version SET version_num = :revision")
        db.session.execute(set_revision, {"revision": previous})
        db.session.commit()
    worker = start_worker("early")
    deadline = time.monotonic() + 60
    while "waits for the database" not in worker.text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f"job {job_id} waits for the database: The database schema is at migration {previous}" \
        in worker.text(), worker.text()[-4000:]
    assert client.get(f"/api/jobs/{job_id}").json["state"] == "queued"
    with celery_app.app_context():
        db.session.execute(set_revision, {"revision": head})  # as `flask db upgrade` leaves it
        db.session.commit()
    done = wait_for(client, job_id, FINISHED)
    assert done["state"] == "succeeded", (done, worker.text()[-4000:])


def test_without_a_broker_fine_tuning_answers_503_and_the_job_can_be_retried(
        make_app: Callable[..., Flask]) -> None:
    app = make_app(CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0", **SETTINGS)  # nothing listens
    client = app.test_client()
    voice_id = client.post("/api/train-voice", json={"modelName": "Plain", "audioDataUri": recording(4.0)}
                           ).json["modelId"]
    asked = client.post(f"/api/voices/{voice_id}/fine-tune", json={"samples": samples()})
    assert asked.status_code == 503 and "VOICEFORGE_CELERY_BROKER_URL" in asked.json["detail"], asked.json
    [job] = client.get(f"/api/jobs?voiceId={voice_id}").json["jobs"]
    assert job["state"] == "failed" and "could not be queued" in job["error"], job  # not stuck as queued
    assert client.post(f"/api/voices/{voice_id}/fine-tune", json={"samples": samples()}).status_code == 503


def test_the_database_backends_runner_refuses_to_run_beside_celery(make_app: Callable[..., Flask]) -> None:
    """`flask jobs worker` would claim the jobs meant for the Celery workers and train on this machine."""
    app = make_app(CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0", **SETTINGS)
    refused = app.test_cli_runner().invoke(args=["jobs", "worker"])
    assert refused.exit_code == 1 and "Celery workers run the jobs" in refused.output, refused.output


def test_a_worker_with_a_bad_setting_refuses_in_one_line(tmp_path: Path) -> None:
    settings = {"INSTANCE_PATH": str(tmp_path), "JOB_BACKEND": "celery", "MAX_TEXT_CHARS": "many",
                "CELERY_BROKER_URL": "redis://127.0.0.1:9/0"}
    environment = {**os.environ, **{f"VOICEFORGE_{key}": value for key, value in settings.items()}}
    result = subprocess.run([str(CELERY), "-A", "voiceforge.jobs.celery_backend", "worker"], cwd=ROOT,
                            env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == "voiceforge: VOICEFORGE_MAX_TEXT_CHARS=many is not valid: an integer."


def test_a_task_that_meets_a_database_outage_looks_again(make_app: Callable[..., Flask],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Failing the task would acknowledge it: its job would stay queued, with no task left to run it."""
    from voiceforge.jobs import celery_backend, store

    app = make_app(CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0", **SETTINGS)
    client = app.test_client()
    voice_id = client.post("/api/train-voice", json={"modelName": "Plain", "audioDataUri": recording(4.0)}
                           ).json["modelId"]
    with app.app_context():
        job_id = store.new_job(voice_id, {"language": "en"}, epochs=1).id  # as if its task were in Redis
    failures = unreachable_once(monkeypatch, store, "claim")
    monkeypatch.setattr(celery_backend, "_runner", None)
    monkeypatch.setattr("voiceforge.jobs.runner.default_work", lambda: {"finetune": lambda *_args: None})
    celery_backend.finetune.apply(args=(job_id,))  # in this process; a retry runs again at once
    assert not failures
    assert client.get(f"/api/jobs/{job_id}").json["state"] == "succeeded"


def test_retrying_a_job_whose_worker_died_sends_its_task_again(make_app: Callable[..., Flask],
                                                               broker_url: str) -> None:
    """Redis gives a dead worker's task back only after the visibility timeout (6 h by default): until
    then the operator's only other way out was cancelling, which deletes the recordings and checkpoints."""
    from voiceforge.jobs import store

    app = make_app(CELERY_BROKER_URL=broker_url, **SETTINGS)
    client = app.test_client()
    job_id = enrol_with_fine_tuning(client).json["jobId"]
    queue = redis.Redis.from_url(broker_url)
    queue.delete("voiceforge")  # as if a worker had taken the task and died
    with app.app_context():
        store.claim(job_id, "a-worker-that-died", lease_seconds=-1)
    cli = app.test_cli_runner()
    retried = cli.invoke(args=["jobs", "retry", job_id])
    assert retried.exit_code == 0 and "resumes it from its checkpoint" in retried.output, retried.output
    assert queue.llen("voiceforge") == 1  # its task, for the next free worker, which claims the job
    with app.app_context():
        store.claim(job_id, "a-live-worker", lease_seconds=60)
    refused = cli.invoke(args=["jobs", "retry", job_id])  # under a live lease it is no worker's to take
    assert refused.exit_code == 1 and "is running; only failed jobs" in refused.output, refused.output


def test_a_sweep_that_cannot_reach_the_broker_leaves_the_dead_worker_s_job_queued(
        make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture) -> None:
    """Not failed, as a request's job is when its task cannot be sent: Redis still holds the dead worker's
    task, and delivers it again after the visibility timeout. One sweep takes each job once."""
    from voiceforge.jobs import celery_backend, store
    from voiceforge.jobs.orphans import OrphanSweeper

    app = make_app(CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0", **SETTINGS)  # nothing listens
    client = app.test_client()
    dead_voice, live_voice = (client.post("/api/train-voice", json={
        "modelName": name, "audioDataUri": recording(4.0)}).json["modelId"] for name in ("Dead", "Live"))
    with app.app_context():
        job_id = store.new_job(dead_voice, {"language": "en"}, epochs=1).id
        store.claim(job_id, "a-worker-that-died", lease_seconds=-1)
        live_id = store.new_job(live_voice, {"language": "en"}, epochs=1).id
        store.claim(live_id, "a-live-worker", lease_seconds=60)
    sweeper = OrphanSweeper(app, 1.0, lambda job_id: celery_backend.send_job(job_id, fail_unsent=False))
    assert sweeper.sweep() == []  # the broker refused it
    job = client.get(f"/api/jobs/{job_id}").json
    assert job["state"] == "queued" and "resume from its checkpoint" in job["message"], job
    assert client.get(f"/api/jobs/{live_id}").json["state"] == "running"  # a live lease is left alone
    assert "the Celery broker did not take its task" in caplog.text
    assert sweeper.sweep() == []  # queued now: not swept again
