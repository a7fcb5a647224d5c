"""Fine-tuning jobs end to end: the API, the runner, training in a child process, serving the weights."""

from __future__ import annotations

import base64
import errno
import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.support.finetune import (
    build_training_checkpoint,
    enrol_with_fine_tuning,
    recording,
    samples,
    unreachable_once,
    wait_for,
)
from tests.support.registry import files_under
from voiceforge.jobs import finetune, store
from voiceforge.jobs.runner import JobCancelled, JobRunner, LeaseLost
from voiceforge.models import JobState, utcnow
from voiceforge.runtime import get_runtime
from voiceforge.services import voices


@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_training_checkpoint(tmp_path_factory.mktemp("ft") / "xtts")


@pytest.fixture
def ft_app(make_app, training_checkpoint: Path) -> Flask:
    # A learning rate that moves a tiny random model in a few steps; little speech is enough here.
    return make_app(MODEL_DIR=str(training_checkpoint), FINETUNE_LEARNING_RATE=1e-3,
                    FINETUNE_MIN_SPEECH_SECONDS=10.0, JOB_LEASE_SECONDS=5.0)


@pytest.fixture
def ft_client(ft_app: Flask) -> FlaskClient:
    return ft_app.test_client()


@pytest.fixture
def runner(ft_app: Flask) -> Iterator[JobRunner]:
    """A job runner in a thread of this process, as `flask jobs worker` runs one."""
    job_runner = JobRunner(ft_app, poll_seconds=0.2)
    thread = threading.Thread(target=job_runner.run_forever, daemon=True)
    thread.start()
    yield job_runner
    job_runner.stop()
    thread.join(60)


def speak(client: FlaskClient, voice_id: str) -> str:
    body = {"text": "Hello there.", "voiceId": voice_id, "variability": 0}
    response = client.post("/api/tts", json=body)
    assert response.status_code == 200, response.json
    return response.json["audioDataUri"]


def test_fine_tuning_switches_the_voice_to_its_own_weights(ft_client: FlaskClient, ft_app: Flask,
                                                           runner: JobRunner) -> None:
    other = ft_client.post("/api/train-voice", json={"modelName": "Other", "audioDataUri": recording(4.0, 7)})
    other_id = other.json["modelId"]
    other_before = speak(ft_client, other_id)
    queued = enrol_with_fine_tuning(ft_client)
    assert queued.status_code == 202, queued.json
    body = queued.json
    assert body["trainingStatus"] == "queued" and body["jobId"]
    voice_id = body["modelId"]
    before = speak(ft_client, voice_id)  # usable zero-shot at once
    assert ft_client.get(f"/api/voices/{voice_id}").json["kind"] == "cloned"

    seen_progress: list[float] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        job = ft_client.get(f"/api/jobs/{body['jobId']}").json
        seen_progress.append(job["progress"])
        if job["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.3)
    assert job["state"] == "succeeded", job
    assert job["epochs"] == 4 and job["steps"] > 0 and job["step"] == job["steps"] and job["loss"] is not None
    assert job["datasetSeconds"] and job["attempts"] == 1 and job["finishedAt"]
    assert seen_progress == sorted(seen_progress) and len(set(seen_progress)) > 2  # it rose, in steps

    voice = ft_client.get(f"/api/voices/{voice_id}").json
    assert voice["kind"] == "finetuned"
    assert voice["fineTuning"] == {"state": "succeeded", "progress": 1.0, "message": job["message"],
                                   "jobId": body["jobId"]}
    after = speak(ft_client, voice_id)
    assert after != before and speak(ft_client, voice_id) == after  # its own weights, deterministic
    assert speak(ft_client, other_id) == other_before  # no weight leaks between voices
    streamed = ft_client.post("/api/tts/stream", json={"text": "Hello there.", "voiceId": voice_id,
                                                        "variability": 0, "format": "pcm"})
    whole = np.frombuffer(base64.b64decode(after.split(",", 1)[1])[44:], dtype="<i2").astype(int)
    stream = np.frombuffer(streamed.data, dtype="<i2").astype(int)
    # The stream speaks with the same fine-tuned weights (equal but for float rounding).
    assert stream.size == whole.size and np.abs(stream - whole).max() <= 1
    data_dir = Path(ft_app.config["DATA_DIR"])
    assert [name for name in files_under(data_dir) if name.startswith(".jobs")] == []  # work removed
    weights = [name for name in files_under(data_dir / voice_id) if name.startswith("gpt-")]
    assert len(weights) == 1 and (data_dir / voice_id / weights[0]).stat().st_size < 5_000_000


@pytest.mark.parametrize(("change", "status", "detail"), [
    ({"samples": samples(1, 3.0)}, 422, "s of speech; fine-tuning needs at least 10 s"),
    ({"samples": [{"audioDataUri": recording(4.0)}] * 3}, 422, "has no text"),
    ({"samples": [{"audioDataUri": recording(14.0, 3), "text": "too long for one clip"}] * 2}, 422,
     "at most 11 s"),
    ({"samples": [{"audioDataUri": "data:audio/wav;base64," + base64.b64encode(b"%PDF-1.4" * 50).decode(),
                   "text": "x"}]}, 415, "PDF"),
    ({"samples": [{"audioDataUri": "not a data uri", "text": "x"}]}, 400, "samples[0]"),
    ({"samples": samples(1) * 51}, 422, "samples"),
    ({"epochs": 0}, 422, "epochs"),
    ({"epochs": 51}, 422, "epochs"),
    ({"epochs": 2.5}, 400, "epochs"),  # refused, not cut to 2
    ({"samples": ["x"]}, 400, "samples"),  # a wrong type inside a list is as malformed as outside
    ({"samples": [{"audioDataUri": recording(4.0), "text": 5}]}, 400, "samples"),
    ({"samples": [{"audioDataUri": recording(4.0), "text": " ... "}] * 3}, 422, "has no text"),
    ({"transcript": "   "}, 422, "Recording 1 of"),
    # A missing text is refused before anything is decoded (decoding and the VAD cost CPU time).
    ({"samples": [{"audioDataUri": "data:audio/wav;base64," + base64.b64encode(b"%PDF-1.4" * 50).decode()}]},
     422, "has no text"),
])
def test_bad_fine_tuning_requests_leave_nothing(ft_client: FlaskClient, ft_app: Flask, change: dict,
                                                status: int, detail: str) -> None:
    response = enrol_with_fine_tuning(ft_client, **change)
    assert response.status_code == status, response.json
    assert detail in response.json["detail"]
    assert [v for v in ft_client.get("/api/voices").json["voices"] if v["kind"] != "builtin"] == []
    assert ft_client.get("/api/jobs").json == {"jobs": []}
    assert files_under(Path(ft_app.config["DATA_DIR"])) == []


def test_a_second_job_for_a_voice_is_409_and_cancel_stops_a_queued_one(ft_client: FlaskClient) -> None:
    queued = enrol_with_fine_tuning(ft_client).json
    again = ft_client.post(f"/api/voices/{queued['modelId']}/fine-tune", json={"samples": samples()})
    assert again.status_code == 409 and "already" in again.json["detail"]
    cancelled = ft_client.post(f"/api/jobs/{queued['jobId']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json["state"] == "cancelled"
    data_dir = Path(ft_client.application.config["DATA_DIR"])
    assert not (data_dir / ".jobs" / queued["jobId"]).exists()  # its recordings go with it
    retried = ft_client.post(f"/api/voices/{queued['modelId']}/fine-tune", json={"samples": samples()})
    assert retried.status_code == 202 and retried.json["jobId"] != queued["jobId"]
    listed = ft_client.get(f"/api/jobs?voiceId={queued['modelId']}").json["jobs"]
    assert [job["state"] for job in listed] == ["queued", "cancelled"]
    assert ft_client.get("/api/jobs?state=cancelled").json["jobs"][0]["id"] == queued["jobId"]
    newest = ft_client.get("/api/jobs?limit=1").json["jobs"]
    assert [job["id"] for job in newest] == [retried.json["jobId"]]
    newest_cancelled = ft_client.get("/api/jobs?limit=1&state=cancelled").json["jobs"]
    assert [job["id"] for job in newest_cancelled] == [queued["jobId"]]
    for limit, status in (("0", 422), ("1001", 422), ("ten", 400)):
        refused = ft_client.get(f"/api/jobs?limit={limit}")
        assert refused.status_code == status and "limit" in str(refused.json), refused.json
    assert ft_client.get("/api/jobs/nope").status_code == 404


def test_a_cancel_that_crosses_a_runners_claim_asks_the_runner_to_stop(ft_client: FlaskClient,
                                                                       ft_app: Flask) -> None:
    from sqlalchemy import update

    from voiceforge.db import db
    from voiceforge.models import Job

    queued = enrol_with_fine_tuning(ft_client).json
    with ft_app.app_context():
        job = store.get_job(queued["jobId"])  # read as queued, as the cancel request reads it
        with db.engine.begin() as runner:  # a runner claims it meanwhile, on its own connection
            lease = utcnow() + timedelta(minutes=1)
            runner.execute(update(Job).where(Job.id == job.id).values(
                state=JobState.running, lease_owner="runner-1", lease_expires_at=lease))
        store.request_cancel(job)
        assert (job.state, job.cancel_requested, job.lease_owner) == (JobState.running, True, "runner-1")
    shown = ft_client.get(f"/api/jobs/{queued['jobId']}").json
    assert (shown["state"], shown["message"]) == ("running", "Cancelling…")


def test_cancel_mid_training_stops_within_seconds_and_removes_its_files(
        ft_client: FlaskClient, ft_app: Flask, runner: JobRunner) -> None:
    queued = enrol_with_fine_tuning(ft_client, epochs=50).json
    job = wait_for(ft_client, queued["jobId"], {"running"})
    deadline = time.monotonic() + 120
    while job["step"] == 0 and time.monotonic() < deadline:  # training has really started
        time.sleep(0.3)
        job = ft_client.get(f"/api/jobs/{queued['jobId']}").json
    assert job["state"] == "running" and job["step"] > 0, job
    asked = time.monotonic()
    ft_client.post(f"/api/jobs/{queued['jobId']}/cancel")
    job = wait_for(ft_client, queued["jobId"], {"cancelled", "failed", "succeeded"}, timeout=30)
    assert job["state"] == "cancelled" and time.monotonic() - asked < 15, job
    data_dir = Path(ft_app.config["DATA_DIR"])
    assert not (data_dir / ".jobs" / queued["jobId"]).exists()
    assert ft_client.get(f"/api/voices/{queued['modelId']}").json["kind"] == "cloned"
    speak(ft_client, queued["modelId"])  # still speaks zero-shot


def test_deleting_the_voice_mid_job_stops_it_and_removes_everything(
        ft_client: FlaskClient, ft_app: Flask, runner: JobRunner) -> None:
    queued = enrol_with_fine_tuning(ft_client, epochs=50).json
    wait_for(ft_client, queued["jobId"], {"running"})
    assert ft_client.delete(f"/api/voices/{queued['modelId']}").status_code == 204
    assert ft_client.get(f"/api/jobs/{queued['jobId']}").status_code == 404
    data_dir = Path(ft_app.config["DATA_DIR"])
    deadline = time.monotonic() + 30
    while files_under(data_dir) and time.monotonic() < deadline:  # the runner notices and stops
        time.sleep(0.3)
    assert files_under(data_dir) == []


def test_a_full_disk_while_exporting_fails_the_job_and_the_voice_still_speaks(
        ft_client: FlaskClient, runner: JobRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    from voiceforge.finetune import export

    def full_disk(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export, "export_gpt", full_disk)
    queued = enrol_with_fine_tuning(ft_client, epochs=1).json
    job = wait_for(ft_client, queued["jobId"], {"succeeded", "failed", "cancelled"})
    assert job["state"] == "failed" and "disk is full" in job["error"], job
    voice = ft_client.get(f"/api/voices/{queued['modelId']}").json
    assert voice["kind"] == "cloned" and voice["fineTuning"]["state"] == "failed"
    speak(ft_client, queued["modelId"])


def test_a_job_without_usable_clips_fails_saying_why_and_keeps_its_log(
        ft_client: FlaskClient, ft_app: Flask, runner: JobRunner) -> None:
    # Every text is in a script the English tokenizer does not know, so the trainer skips every clip.
    unknown = [{**sample, "text": f"\u4e00\u4e01\u4e03 {index}"} for index, sample in enumerate(samples())]
    queued = enrol_with_fine_tuning(ft_client, transcript="\u4e00\u4e01\u4e03", samples=unknown, epochs=1)
    assert queued.status_code == 202, queued.json
    job = wait_for(ft_client, queued.json["jobId"], {"succeeded", "failed", "cancelled"})
    assert job["state"] == "failed", job
    # The reasons are in the job's error (what `flask jobs show` and the API give), counted per kind.
    error = job["error"]
    assert "no usable training clips" in error and "see the log" not in error, error
    assert ": 6 with unknown characters (e.g. wavs/" in error, error
    assert "the tokenizer does not know" in error, error
    assert len(error) < 1000, error
    kept = Path(ft_app.config["DATA_DIR"]) / ".jobs" / job["id"] / "train.log"
    assert f"(the trainer's log: {kept})" in error
    assert "skipping training clip" in kept.read_text()  # each clip's reason, for the operator to read
    shown = ft_app.test_cli_runner().invoke(args=["jobs", "show", job["id"]])
    assert "unknown characters" in shown.output, shown.output


def write_takes(directory: Path) -> list[Path]:
    """Four 4-second takes of the voice, as WAV files for `voices finetune`."""
    from tests.support.audio import VOICE_RATE, encode_audio, phrases

    files = []
    for index in range(4):
        path = directory / f"take{index}.wav"
        path.write_bytes(encode_audio(phrases(0.3, 4.0, 0.3, seed=30 + index), VOICE_RATE, "wav")[0])
        files.append(path)
    return files


def test_waiting_on_a_job_that_nothing_claims_says_a_runner_is_needed(
        ft_app: Flask, ft_client: FlaskClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`voices finetune --wait` without a job runner would wait for ever without a word."""
    monkeypatch.setattr("voiceforge.jobs.cli.QUEUED_HINT_S", 0.5, raising=False)
    enrolled = ft_client.post("/api/train-voice", json={"modelName": "Idle", "audioDataUri": recording()})
    files = write_takes(tmp_path)
    transcripts = tmp_path / "takes.csv"
    transcripts.write_text("".join(f"{path.name},take number {i}\n" for i, path in enumerate(files)))

    def cancel_once_queued() -> None:  # the operator gives up: the command must end then
        deadline = time.monotonic() + 30
        while not (jobs := ft_client.get("/api/jobs").json["jobs"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        ft_client.post(f"/api/jobs/{jobs[0]['id']}/cancel")

    canceller = threading.Thread(target=cancel_once_queued)
    canceller.start()
    voice_id = enrolled.json["modelId"]
    waited = ft_app.test_cli_runner().invoke(
        args=["voices", "finetune", voice_id, *map(str, files), "--transcripts", str(transcripts), "--wait"])
    canceller.join()
    assert "is a job runner running?" in waited.output and "jobs worker" in waited.output, waited.output
    assert waited.exit_code == 1 and "cancelled" in waited.output


def test_the_jobs_cli_queues_lists_shows_cancels_and_retries(ft_app: Flask, ft_client: FlaskClient,
                                                             tmp_path: Path) -> None:
    import csv
    import json

    enrolled = ft_client.post("/api/train-voice", json={"modelName": "Cli", "audioDataUri": recording()})
    voice_id = enrolled.json["modelId"]
    files = write_takes(tmp_path)
    transcripts = tmp_path / "takes.csv"
    with transcripts.open("w", newline="", encoding="utf-8-sig") as handle:  # as Excel saves it
        csv.writer(handle).writerows([("file", "text"), *((path.name, f"take number {i} of the voice")
                                                          for i, path in enumerate(files))])
    cli = ft_app.test_cli_runner()
    untranscribed = cli.invoke(args=["voices", "finetune", voice_id, *map(str, files)])
    assert untranscribed.exit_code == 1 and "has no text" in untranscribed.output
    assert "--transcripts" in untranscribed.output
    (tmp_path / "typo.csv").write_text(f"{files[0].name},first take\ntake9.wav,no such take\n")
    (tmp_path / "latin1.csv").write_bytes(f"{files[0].name},caf\xe9 au lait\n".encode("latin-1"))
    for name, problem in (("typo.csv", "line 2: 'take9.wav' is not among the files given"),
                          ("latin1.csv", "is not UTF-8 text")):
        refused = cli.invoke(args=["voices", "finetune", voice_id, *map(str, files), "--transcripts",
                                   str(tmp_path / name)])
        assert refused.exit_code == 1 and problem in refused.output, refused.output
    assert ft_client.get("/api/jobs").json == {"jobs": []}

    queued = cli.invoke(args=["voices", "finetune", voice_id, *map(str, files), "--transcripts",
                              str(transcripts), "--epochs", "3"])
    assert queued.exit_code == 0, queued.output
    job_id = queued.output.split()[2].rstrip(".")
    again = cli.invoke(args=["voices", "finetune", voice_id, *map(str, files), "--transcripts",
                             str(transcripts)])
    assert again.exit_code == 1 and "already has a fine-tuning job" in again.output  # as the API says
    listed = json.loads(cli.invoke(args=["jobs", "list", "--voice", voice_id, "--json"]).output)
    assert [(job["id"], job["state"], job["epochs"]) for job in listed] == [(job_id, "queued", 3)]
    assert "queued" in cli.invoke(args=["jobs", "show", job_id]).output
    assert cli.invoke(args=["jobs", "retry", job_id]).exit_code == 0  # queued: its task is sent again
    assert "cancelled" in cli.invoke(args=["jobs", "cancel", job_id]).output
    cancelled = cli.invoke(args=["jobs", "retry", job_id])
    assert cancelled.exit_code == 1 and "was cancelled, which removed its recordings" in cancelled.output
    queued = cli.invoke(args=["voices", "finetune", voice_id, *map(str, files), "--transcripts",
                              str(transcripts)])
    job_id = queued.output.split()[2].rstrip(".")
    with ft_app.app_context():
        store.finish(store.get_job(job_id), JobState.failed, error="The trainer exited with 1.")
    assert cli.invoke(args=["jobs", "retry", job_id]).exit_code == 0
    assert ft_client.get(f"/api/jobs/{job_id}").json["state"] == "queued"
    assert "not found" in cli.invoke(args=["jobs", "show", "nope"]).output


def test_transcripts_name_recordings_that_share_a_base_name_by_their_paths(
        ft_app: Flask, ft_client: FlaskClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from click.testing import Result

    from tests.support.audio import VOICE_RATE, encode_audio, phrases

    enrolled = ft_client.post("/api/train-voice", json={"modelName": "Twins", "audioDataUri": recording()})
    voice_id = enrolled.json["modelId"]
    takes = [Path("a/take.wav"), Path("b/take.wav"), Path("c/other.wav")]
    for index, take in enumerate(takes):
        (tmp_path / take).parent.mkdir()
        speech = phrases(0.3, 4.0, 0.3, seed=40 + index)
        (tmp_path / take).write_bytes(encode_audio(speech, VOICE_RATE, "wav")[0])
    texts = ["the first take in folder a", "the second take in folder b", "another take in folder c"]
    monkeypatch.chdir(tmp_path)  # the files as a shell in their folder would give them
    cli = ft_app.test_cli_runner()

    def finetune(csv_path: Path, rows: list[str]) -> Result:
        csv_path.parent.mkdir(exist_ok=True)
        csv_path.write_text("".join(f"{name},{text}\n" for name, text in zip(rows, texts, strict=True)))
        return cli.invoke(args=["voices", "finetune", voice_id, *map(str, takes),
                                "--transcripts", str(csv_path)])

    def queued_texts(result: Result) -> list[str]:
        assert result.exit_code == 0, result.output
        job_id = result.output.split()[2].rstrip(".")
        manifest = Path(ft_app.config["DATA_DIR"]) / ".jobs" / job_id / "inputs" / "manifest.json"
        stored = [entry["text"] for entry in json.loads(manifest.read_text())]
        assert "cancelled" in cli.invoke(args=["jobs", "cancel", job_id]).output
        return stored

    # By base name only, the two takes are indistinguishable: refused, naming both, nothing queued.
    refused = finetune(tmp_path / "t.csv", ["take.wav", "take.wav", "other.wav"])
    assert refused.exit_code == 1, refused.output
    assert refused.output.strip().splitlines() == [
        f"Error: {tmp_path / 't.csv'}, line 1: 'take.wav' could be any of a/take.wav, b/take.wav; "
        "name each by its path relative to the CSV's folder."]
    assert ft_client.get("/api/jobs").json == {"jobs": []}
    # By path relative to the CSV's folder; an unambiguous base name still does.
    assert queued_texts(finetune(tmp_path / "t.csv", ["b/take.wav", "./a/take.wav", "other.wav"])) == [
        texts[1], texts[0], texts[2]]
    # By path as given on the command line, from a CSV in another folder.
    elsewhere = finetune(tmp_path / "lists" / "t.csv", ["a/take.wav", "b/take.wav", "c/other.wav"])
    assert queued_texts(elsewhere) == texts


def test_a_built_in_voice_cannot_be_fine_tuned_or_removed_from_the_cli(ft_app: Flask, tmp_path: Path) -> None:
    from tests.support.audio import VOICE_RATE, encode_audio, phrases

    take = tmp_path / "take.wav"
    take.write_bytes(encode_audio(phrases(0.3, 4.0, 0.3), VOICE_RATE, "wav")[0])
    cli = ft_app.test_cli_runner()
    for args in (["voices", "finetune", "default-female", str(take)],
                 ["voices", "remove", "default-female", "--yes"]):
        result = cli.invoke(args=args)
        # As the API says it (409), not "not found": the voice exists, inside the model.
        assert result.exit_code == 1 and "is a built-in voice of the model" in result.output, result.output


def test_a_voice_fine_tuned_before_trains_on_from_its_own_weights(ft_client: FlaskClient, ft_app: Flask,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    queued = enrol_with_fine_tuning(ft_client).json
    plans: list = []

    def started(plan: object) -> None:
        plans.append(plan)
        raise RuntimeError("captured")  # the plan is all this test needs

    monkeypatch.setattr("voiceforge.finetune.train.start_training", started)
    data_dir = Path(ft_app.config["DATA_DIR"])
    with ft_app.app_context():
        runtime, job = get_runtime(ft_app), store.get_job(queued["jobId"])
        for weights in (None, f"{queued['modelId']}/gpt-earlier.pth"):  # zero-shot, then fine-tuned once
            voice = voices.get_voice(queued["modelId"])
            voice.weights_path = weights
            with pytest.raises(RuntimeError, match="captured"):
                finetune.train(runtime, job, Path("base"), Path("dataset"), Path("work"), lambda **_: None)
    assert [plan.start_gpt for plan in plans] == [None, data_dir / queued["modelId"] / "gpt-earlier.pth"]


def test_cancelling_a_job_whose_runner_died_ends_it_at_once(ft_client: FlaskClient, ft_app: Flask) -> None:
    """Nobody is left to notice the request: waiting for one would keep the voice locked for hours."""
    queued = enrol_with_fine_tuning(ft_client).json
    with ft_app.app_context():
        store.claim(queued["jobId"], "a-runner-that-died", lease_seconds=-1)  # its lease has run out
    cancelled = ft_client.post(f"/api/jobs/{queued['jobId']}/cancel").json
    assert cancelled["state"] == "cancelled" and cancelled["message"] == "Cancelled (its runner had stopped)."
    assert not (Path(ft_app.config["DATA_DIR"]) / ".jobs" / queued["jobId"]).exists()
    again = ft_client.post(f"/api/voices/{queued['modelId']}/fine-tune", json={"samples": samples()})
    assert again.status_code == 202


def test_a_runner_that_lost_its_lease_leaves_the_work_to_the_new_owner(
        ft_client: FlaskClient, ft_app: Flask) -> None:
    queued = enrol_with_fine_tuning(ft_client).json

    def lease_lost_once_the_dataset_is_ready(force: bool = False, **fields: object) -> None:
        if "dataset_seconds" in fields:
            raise LeaseLost()

    with ft_app.app_context(), pytest.raises(LeaseLost):
        finetune.run_finetune(get_runtime(ft_app), store.get_job(queued["jobId"]),
                              lease_lost_once_the_dataset_is_ready)
    work = Path(ft_app.config["DATA_DIR"]) / ".jobs" / queued["jobId"]
    assert (work / "dataset" / "metadata_train.csv").is_file() and (work / "inputs").is_dir()


def test_a_cancel_that_comes_after_the_voice_switched_loses(ft_client: FlaskClient, ft_app: Flask,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Job and voice must agree: a voice speaking with its new weights belongs to a succeeded job."""
    queued = enrol_with_fine_tuning(ft_client).json
    switched = []
    monkeypatch.setattr(finetune, "prepare_dataset", lambda *_args: Path("dataset"))
    monkeypatch.setattr(finetune, "train", lambda *_args: Path("checkpoint.pth"))
    monkeypatch.setattr(finetune, "switch_voice", lambda *_args: switched.append(True))

    def cancel_asked_during_export(force: bool = False, **fields: object) -> None:
        if fields.get("progress") == 1.0:
            raise JobCancelled()

    with ft_app.app_context():
        finetune.run_finetune(get_runtime(ft_app), store.get_job(queued["jobId"]),
                              cancel_asked_during_export)
    assert switched == [True]


def test_a_voice_deleted_while_its_job_exports_stays_deleted(ft_client: FlaskClient, ft_app: Flask,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Its row (and the job's) goes first: the export must not make its directory again, and the
    runner must end the job quietly rather than die on a row that is gone."""
    queued = enrol_with_fine_tuning(ft_client).json
    data_dir = Path(ft_app.config["DATA_DIR"])
    read = voices.get_voice

    def read_then_deleted(voice_id: str) -> object:
        voice = read(voice_id)
        monkeypatch.setattr(voices, "get_voice", read)
        voices.delete_voice(voice_id, data_dir)  # the user deletes it as the export begins
        return voice

    def export_now(runtime: object, job: object, beat: object) -> None:
        monkeypatch.setattr(voices, "get_voice", read_then_deleted)
        finetune.switch_voice(runtime, job, Path("checkpoint.pth"))

    job_runner = JobRunner(ft_app, work={"finetune": export_now})
    with ft_app.app_context():
        job = store.claim_next(job_runner.owner, job_runner.lease_seconds)
    assert job_runner.execute(job.id) is None  # nothing to record: the job's row went with the voice
    assert not (data_dir / queued["modelId"]).exists()
    assert ft_client.get(f"/api/jobs/{job.id}").status_code == 404


def test_an_undecodable_sample_is_named_by_its_place(ft_client: FlaskClient) -> None:
    bad = [*samples()[:3], {"audioDataUri": "data:audio/wav;base64,aGVsbG8gd29ybGQ=", "text": "x"}]
    refused = enrol_with_fine_tuning(ft_client, samples=bad)
    assert refused.status_code == 415 and refused.json["detail"].startswith("Recording 5:"), refused.json


def test_a_failure_while_recording_progress_stops_the_trainer(ft_client: FlaskClient, ft_app: Flask,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The job fails, and its trainer must not train on beside the runner's next job."""
    from voiceforge.finetune import train

    queued = enrol_with_fine_tuning(ft_client, epochs=50).json
    trainers: list[train.TrainingProcess] = []
    start = train.start_training
    monkeypatch.setattr(train, "start_training", lambda plan: trainers.append(start(plan)) or trainers[-1])

    def database_locked_at_the_first_step(force: bool = False, **fields: object) -> None:
        if "step" in fields:
            raise RuntimeError("database is locked")

    with ft_app.app_context():
        runtime, job = get_runtime(ft_app), store.get_job(queued["jobId"])
        work = finetune.job_dir(runtime, job.id)
        dataset = finetune.prepare_dataset(runtime, job, work, lambda **_: None)
        try:
            with pytest.raises(RuntimeError, match="database is locked"):
                finetune.train(runtime, job, finetune.fine_tuning_base(runtime), dataset, work,
                               database_locked_at_the_first_step)
            assert not trainers[0].alive
        finally:
            trainers[0].terminate()


def test_a_step_that_reports_nothing_for_longer_than_the_lease_keeps_its_job(make_app) -> None:
    """Cutting long recordings into clips or loading the model to export can take minutes without a
    progress report: the runner is alive all along, so no other runner may take the job over."""
    app = make_app(FINETUNE_MIN_SPEECH_SECONDS=10.0, JOB_LEASE_SECONDS=2.0)
    enrol_with_fine_tuning(app.test_client())
    in_step, step_done = threading.Event(), threading.Event()

    def long_silent_step(runtime: object, job: object, beat) -> None:
        beat(force=True, progress=0.0, message="Preparing the dataset…")
        in_step.set()
        step_done.wait(60)
        beat(force=True, progress=0.5)

    first = JobRunner(app, owner="first", work={"finetune": long_silent_step})
    with app.app_context():
        job_id = store.claim_next(first.owner, first.lease_seconds).id
    running = threading.Thread(target=first.execute, args=(job_id,))
    running.start()
    try:
        assert in_step.wait(30)
        time.sleep(2.5 * first.lease_seconds)
        with app.app_context():
            taken_over = store.claim_next("second", first.lease_seconds)
    finally:
        step_done.set()
        running.join(30)
    assert taken_over is None
    job = app.test_client().get(f"/api/jobs/{job_id}").json
    assert job["state"] == "succeeded" and job["attempts"] == 1, job


def test_a_runner_that_stalled_past_its_lease_leaves_the_job_to_its_new_runner(make_app) -> None:
    """A stopped process or a swapping machine: its lease ran out, another runner took the job over,
    and when the first wakes and fails, the job is the second's to end, not 'failed' under it."""
    from sqlalchemy import update

    from voiceforge.db import db
    from voiceforge.models import Job

    app = make_app(FINETUNE_MIN_SPEECH_SECONDS=10.0)
    enrol_with_fine_tuning(app.test_client())
    stalled, taken_over = threading.Event(), threading.Event()

    def stalls_then_fails(runtime: object, job: object, beat) -> None:
        stalled.set()
        taken_over.wait(60)
        raise RuntimeError("woke up to a broken state")

    first = JobRunner(app, owner="first", work={"finetune": stalls_then_fails})
    with app.app_context():
        job_id = store.claim_next(first.owner, first.lease_seconds).id
    running = threading.Thread(target=first.execute, args=(job_id,))
    running.start()
    assert stalled.wait(30)
    with app.app_context(), db.engine.begin() as second:  # its lease ran out, and another runner took it
        lease = utcnow() + timedelta(minutes=1)
        second.execute(update(Job).where(Job.id == job_id).values(
            lease_owner="second", lease_expires_at=lease, attempts=Job.attempts + 1))
    taken_over.set()
    running.join(30)
    job = app.test_client().get(f"/api/jobs/{job_id}").json
    assert (job["state"], job["error"], job["attempts"]) == ("running", None, 2), job


def test_a_database_error_while_recording_progress_does_not_fail_the_job(
        make_app, monkeypatch: pytest.MonkeyPatch) -> None:
    """A locked SQLite file or a PostgreSQL restart for a moment must not end hours of training."""
    app = make_app(FINETUNE_MIN_SPEECH_SECONDS=10.0)
    enrol_with_fine_tuning(app.test_client())

    def work(runtime: object, job: object, beat) -> None:
        beat(force=True, progress=0.3, message="Training: step 1.")
        beat(force=True, progress=0.6, message="Training: step 2.")

    failures = unreachable_once(monkeypatch, store, "heartbeat")
    runner = JobRunner(app, work={"finetune": work})
    with app.app_context():
        job_id = store.claim_next(runner.owner, runner.lease_seconds).id
    assert runner.execute(job_id) == JobState.succeeded
    assert not failures
    job = app.test_client().get(f"/api/jobs/{job_id}").json
    assert job["state"] == "succeeded" and job["error"] is None, job


def test_a_voice_deleted_while_its_dataset_is_cut_leaves_no_files(ft_client: FlaskClient, ft_app: Flask,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody will resume a job whose row went with its voice: its clips must not stay on disk for ever."""
    queued = enrol_with_fine_tuning(ft_client).json
    data_dir = Path(ft_app.config["DATA_DIR"])
    build = finetune.build_dataset

    def deleted_meanwhile(*args: object, **kwargs: object) -> object:
        voices.delete_voice(queued["modelId"], data_dir)  # the user deletes the voice while clips are cut
        return build(*args, **kwargs)

    monkeypatch.setattr(finetune, "build_dataset", deleted_meanwhile)
    job_runner = JobRunner(ft_app)
    with ft_app.app_context():
        job_id = store.claim_next(job_runner.owner, job_runner.lease_seconds).id
    assert job_runner.execute(job_id) is None  # nothing to record: the job's row went with the voice
    assert files_under(data_dir) == []


def test_a_runner_goes_on_through_a_database_outage(make_app, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restarting PostgreSQL or a long-locked SQLite file must not end the runner and its trainers."""
    app = make_app(FINETUNE_MIN_SPEECH_SECONDS=10.0)
    client = app.test_client()
    queued = enrol_with_fine_tuning(client).json
    failures = unreachable_once(monkeypatch, store, "claim_next")
    job_runner = JobRunner(app, work={"finetune": lambda *_args: None}, poll_seconds=0.1)
    thread = threading.Thread(target=job_runner.run_forever, daemon=True)
    thread.start()
    try:
        job = wait_for(client, queued["jobId"], {"succeeded", "failed", "cancelled"}, timeout=20)
    finally:
        job_runner.stop()
        thread.join(30)
    assert not failures and job["state"] == "succeeded", job


def test_a_retried_job_shows_none_of_the_failed_run_s_progress(ft_client: FlaskClient, ft_app: Flask) -> None:
    queued = enrol_with_fine_tuning(ft_client).json
    with ft_app.app_context():
        job = store.claim(queued["jobId"], "a-runner", lease_seconds=30)
        store.heartbeat(job.id, "a-runner", 30, progress=0.6, epoch=3, step=40, steps=60, loss=2.5)
        store.finish(store.get_job(job.id), JobState.failed, error="The trainer exited with 1.")
    assert ft_app.test_cli_runner().invoke(args=["jobs", "retry", queued["jobId"]]).exit_code == 0
    job = ft_client.get(f"/api/jobs/{queued['jobId']}").json
    assert job["state"] == "queued" and job["error"] is None and job["attempts"] == 0, job
    # Not 60%, epoch 3, step 40 of 60, as if it were well under way: it has not started yet.
    figures = ("progress", "epoch", "step", "steps", "loss", "startedAt", "finishedAt")
    shown = {key: job[key] for key in figures}
    assert shown == {"progress": 0.0, "epoch": 0, "step": 0, "steps": 0, "loss": None, "startedAt": None,
                     "finishedAt": None}


class ResumedTrainer:
    """A trainer that resumed a run half done (step 50 of 100) and then trains one step a minute."""

    def __init__(self, clock: list[float]) -> None:
        self.clock, self.steps = clock, iter([50, 51, 52])
        self.alive, self.exitcode, self.checkpoint, self.error = True, 0, Path("checkpoint.pth"), None

    def poll(self, timeout: float = 0.0) -> list[dict]:
        self.clock[0] += 60.0
        step = next(self.steps, None)
        if step is None:
            self.alive = False
            return []
        return [{"event": "progress", "step": step, "steps": 100, "epoch": 5, "epochs": 10, "loss": 1.0}]

    def join(self, timeout: float | None = None) -> int:
        return 0

    def terminate(self, grace_s: float = 2.0) -> int:
        return 0


def test_time_left_of_a_resumed_run_counts_only_the_steps_it_trained(
        ft_client: FlaskClient, ft_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a restart a job resumes half done: its time left is not the time since then doubled."""
    from types import SimpleNamespace

    queued = enrol_with_fine_tuning(ft_client).json
    clock = [1000.0]
    monkeypatch.setattr(finetune, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr("voiceforge.finetune.train.start_training", lambda plan: ResumedTrainer(clock))
    messages: list[str] = []
    with ft_app.app_context():
        finetune.train(get_runtime(ft_app), store.get_job(queued["jobId"]), Path("base"), Path("dataset"),
                       Path("work"), lambda **fields: messages.append(fields.get("message", "")))
    # One step a minute and 48 to go after step 52: about 48 minutes, not 3.
    assert [message for message in messages if message][-1] == \
        "Training: epoch 5/10, step 52/100, about 48 min left.", messages


def test_a_cancel_while_the_dataset_is_cut_stops_at_the_next_recording(
        ft_client: FlaskClient, ft_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cutting and transcribing 50 long recordings takes minutes: "Cancelling…" must not last that long."""
    from voiceforge.finetune import dataset

    queued = enrol_with_fine_tuning(ft_client).json  # 7 recordings
    cut: list[int] = []
    plan = dataset._plan

    def cancelled_during_the_second(number: int, *args: object) -> object:
        cut.append(number)
        if number == 2:  # the user presses Cancel
            assert ft_client.post(f"/api/jobs/{queued['jobId']}/cancel").json["message"] == "Cancelling…"
        return plan(number, *args)

    monkeypatch.setattr(dataset, "_plan", cancelled_during_the_second)
    job_runner = JobRunner(ft_app)
    with ft_app.app_context():
        job_id = store.claim_next(job_runner.owner, job_runner.lease_seconds).id
    assert job_runner.execute(job_id) == JobState.cancelled
    assert cut == [1, 2]
    assert not (Path(ft_app.config["DATA_DIR"]) / ".jobs" / job_id).exists()


def test_a_voice_shows_its_retried_job_not_a_newer_one_that_ended_before(ft_client: FlaskClient,
                                                                         ft_app: Flask) -> None:
    first = enrol_with_fine_tuning(ft_client).json
    voice_id = first["modelId"]
    with ft_app.app_context():
        store.finish(store.get_job(first["jobId"]), JobState.failed, error="The trainer exited with 1.")
    second = ft_client.post(f"/api/voices/{voice_id}/fine-tune", json={"samples": samples()}).json
    ft_client.post(f"/api/jobs/{second['jobId']}/cancel")
    assert ft_app.test_cli_runner().invoke(args=["jobs", "retry", first["jobId"]]).exit_code == 0
    shown = ft_client.get(f"/api/voices/{voice_id}").json["fineTuning"]
    assert (shown["jobId"], shown["state"]) == (first["jobId"], "queued"), shown  # not "cancelled"


def checks_miss(monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    """The next `times` checks for a voice's active job see none, as when another request's job is
    inserted just after them; later checks see the table as it is."""
    real, missed = store.active_job, []

    def active_job(voice_id: str):
        if len(missed) < times:
            missed.append(voice_id)
            return None
        return real(voice_id)

    monkeypatch.setattr(store, "active_job", active_job)


def test_two_requests_at_once_queue_one_job_for_a_voice(ft_client: FlaskClient, ft_app: Flask,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each request checks for an active job, then inserts its own: both can pass the check before either
    inserts. Simulated by a check that sees nothing; the database must still refuse the second job."""
    first = enrol_with_fine_tuning(ft_client).json
    checks_miss(monkeypatch, 2)  # the request checks twice: before decoding its audio, and before its insert
    second = ft_client.post(f"/api/voices/{first['modelId']}/fine-tune", json={"samples": samples()})
    assert second.status_code == 409 and "already has a fine-tuning job" in second.json["detail"], second.json
    assert [job["id"] for job in ft_client.get("/api/jobs").json["jobs"]] == [first["jobId"]]
    jobs_dir = Path(ft_app.config["DATA_DIR"]) / ".jobs"
    assert [path.name for path in jobs_dir.iterdir()] == [first["jobId"]]  # the second's recordings went
    # A failed job retried while another is active is refused the same way.
    with ft_app.app_context():
        store.finish(store.get_job(first["jobId"]), JobState.failed, error="The trainer exited with 1.")
    third = ft_client.post(f"/api/voices/{first['modelId']}/fine-tune", json={"samples": samples()})
    assert third.status_code == 202, third.json
    checks_miss(monkeypatch, 1)
    retried = ft_app.test_cli_runner().invoke(args=["jobs", "retry", first["jobId"]])
    assert retried.exit_code != 0 and "already has a fine-tuning job" in retried.output, retried.output
    assert ft_client.get(f"/api/jobs/{first['jobId']}").json["state"] == "failed"
