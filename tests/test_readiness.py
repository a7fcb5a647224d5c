"""Readiness tells the truth: 503 with the fix when no model can be provided, 200 when it can."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from tests.support.migrations import HEAD, ONE_BEHIND
from voiceforge.runtime import get_runtime, warn_if_no_model


def unavailable_causes(tmp_path: Path, checkpoint_dir: Path) -> dict[str, tuple[dict, str]]:
    """Each way a model can be missing: the settings, and a phrase of the advice it must give."""
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(checkpoint_dir / "config.json", partial / "config.json")
    return {
        "no directory": ({"MODEL_DIR": str(tmp_path / "nowhere")}, "has no config.json, model.pth"),
        "files missing": ({"MODEL_DIR": str(partial)}, "has no model.pth, vocab.json"),
        "no licence consent": ({"MODEL_DIR": None}, "COQUI_TOS_AGREED=1"),
        "CUDA absent": ({"DEVICE": "cuda"}, "CUDA is not available"),
    }


@pytest.mark.parametrize("cause", ["no directory", "files missing", "no licence consent", "CUDA absent"])
def test_each_unavailable_cause_gives_503_with_the_advice_tts_gives(
        make_app, tmp_path: Path, checkpoint_dir: Path, cause: str) -> None:
    overrides, advice = unavailable_causes(tmp_path, checkpoint_dir)[cause]
    client = make_app(**overrides).test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json
    assert body["status"] == "unavailable" and body["database"] == "ok"
    assert body["model"]["loaded"] is False and body["model"]["loadable"] is False
    assert advice in body["model"]["problem"]
    spoken = client.post("/api/tts", json={"text": "Hi", "voiceId": "default-female"})
    assert spoken.status_code == 503
    assert spoken.json["detail"] == body["model"]["problem"]

    info = client.application.test_cli_runner().invoke(args=["model", "info", "--json"])
    assert info.exit_code == 1
    assert json.loads(info.output)["problem"] == body["model"]["problem"]


def test_a_usable_checkpoint_is_ready_before_and_after_the_first_request_loads_it(make_app) -> None:
    app = make_app(INFERENCE_QUEUE_SIZE=2)  # an engine of its own: nothing loaded yet
    client = app.test_client()
    before = client.get("/readyz")
    assert before.status_code == 200
    assert before.json["model"] == {**before.json["model"], "loaded": False, "loadable": True}
    assert "problem" not in before.json["model"]
    assert get_runtime(app).engine.loaded is False  # the probe loaded nothing
    assert client.post("/api/tts", json={"text": "Hi", "voiceId": "default-female"}).status_code == 200
    after = client.get("/readyz")
    assert after.status_code == 200
    assert after.json["model"]["loaded"] is True and after.json["model"]["device"] == "cpu"
    assert "decoding" not in before.json["model"]  # nothing is built before the first synthesis
    assert after.json["model"]["decoding"] == {"rows": 8, "gptDtype": "float32", "vocoderDtype": "float32",
                                               "matmul": "onednn", "cudaGraphs": False,
                                               "stepKernels": "torch"}


def test_licence_consent_without_a_download_yet_is_loadable(make_app,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COQUI_TOS_AGREED", "1")
    app = make_app(MODEL_DIR=None)
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 200
    assert ready.json["model"]["loadable"] is True and ready.json["model"]["loaded"] is False


def test_a_checkpoint_that_fails_to_load_makes_readiness_fail(
        make_app, tmp_path: Path, checkpoint_dir: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint_dir, broken)
    (broken / "model.pth").write_bytes(b"not a checkpoint")
    client = make_app(MODEL_DIR=str(broken)).test_client()
    assert client.get("/readyz").status_code == 200  # the files are there: loadable as far as can be seen
    failed = client.post("/api/tts", json={"text": "Hi", "voiceId": "default-female"})
    assert failed.status_code == 503 and "could not be loaded" in failed.json["detail"]
    assert "\n" not in failed.json["detail"]  # torch's own message runs to many lines: its first only
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json["model"]["problem"] == failed.json["detail"]


def test_a_decoder_too_big_for_memory_is_a_503_that_says_what_to_lower(make_app) -> None:
    """VOICEFORGE_MAX_BATCH sizes the decoder's key/value cache: one that cannot be allocated (here
    ten million rows, 4.7 TB) is the operator's setting to lower, said in one line, not a 500."""
    client = make_app(MAX_BATCH=10_000_000).test_client()
    failed = client.post("/api/tts", json={"text": "Hi", "voiceId": "default-female"})
    assert failed.status_code == 503, failed.json
    detail = failed.json["detail"]
    assert detail.startswith("The decoder's key/value cache for VOICEFORGE_MAX_BATCH=10000000 rows (")
    assert " GB) does not fit in the cpu memory" in detail and detail.endswith("lower VOICEFORGE_MAX_BATCH.")
    assert "\n" not in detail
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json["model"]["problem"] == detail
    assert client.post("/api/tts", json={"text": "Hi", "voiceId": "default-female"}).status_code == 503


def test_start_up_warns_once_with_the_fix_when_no_model_is_usable(
        make_app, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="voiceforge")
    assert warn_if_no_model(get_runtime(make_app(MODEL_DIR=None))) is False
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "COQUI_TOS_AGREED" in lines[0] and "503" in lines[0]
    caplog.clear()
    assert warn_if_no_model(get_runtime(make_app())) is True
    assert caplog.records == []


def test_readiness_tells_whether_fine_tuning_jobs_can_run(make_app, tmp_path_factory) -> None:
    from tests.support.checkpoint import build_checkpoint

    without = make_app().test_client().get("/readyz")
    assert without.status_code == 200  # speech is ready: fine-tuning does not decide that
    assert without.json["jobs"]["backend"] == "db" and without.json["jobs"]["canRun"] is False
    assert "dvae.pth, mel_stats.pth" in without.json["jobs"]["problem"]
    trainable = build_checkpoint(tmp_path_factory.mktemp("ready") / "xtts", training_files=True)
    with_files = make_app(MODEL_DIR=str(trainable)).test_client().get("/readyz").json["jobs"]
    assert with_files == {"backend": "db", "canRun": True}


def test_a_sqlite_file_deleted_under_the_running_service_makes_it_unready(make_app, tmp_path: Path) -> None:
    """SQLite keeps answering from the deleted file, so only readiness can tell writes are being lost."""
    client = make_app().test_client()
    assert client.get("/readyz").json["database"] == "ok"
    for path in tmp_path.glob("test.db*"):
        path.unlink()
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json["database"] == "missing"


# -- a database behind this code's migrations ------------------------------------------------------
@pytest.fixture(params=["never migrated", "one migration behind"])
def unmigrated_app(request: pytest.FixtureRequest, tmp_path: Path, checkpoint_dir: Path, shared_engine):
    """An app whose database was never migrated, or stopped at 0002 (new code deployed, upgrade forgotten)."""
    from flask_migrate import upgrade

    from voiceforge import create_app

    app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'old.db'}",
                      "DATA_DIR": str(tmp_path / "voices"), "MODEL_DIR": str(checkpoint_dir),
                      "API_KEYS": ["k1"]}, engine=shared_engine)
    if request.param == "one migration behind":
        with app.app_context():
            upgrade(revision=ONE_BEHIND)
    else:
        (tmp_path / "old.db").touch()  # an empty database (a file that is not there reads as `missing`)
    return app


def test_a_data_directory_gone_under_registered_voices_is_unready_and_not_a_reason_to_re_enrol(
        make_app, tmp_path: Path) -> None:
    """An unmounted volume (or a wrong VOICEFORGE_DATA_DIR) is the operator's to fix: readiness fails,
    and a cloned voice answers 503 saying so, not 409 telling its user to enrol it again."""
    from tests.support.speech import enrol, recording

    data_dir = tmp_path / "volume"
    client = make_app(DATA_DIR=str(data_dir)).test_client()
    assert client.get("/readyz").json["storage"] == "ok"  # a fresh install: no directory, no voices
    voice_id = enrol(client)
    assert client.get("/readyz").status_code == 200
    data_dir.rename(tmp_path / "unmounted")
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json["storage"] == "missing"
    spoken = client.post("/api/tts", json={"text": "Hello.", "voiceId": voice_id})
    assert spoken.status_code == 503 and "data directory" in spoken.json["detail"]
    assert "re-enrol" not in spoken.json["detail"]
    # A new voice must not make the directory anew: it would hide the outage, and its files would
    # vanish under the volume once it is mounted again.
    enrolled = client.post("/api/train-voice", json={"modelName": "Meanwhile", "audioDataUri": recording()})
    assert enrolled.status_code == 503 and "data directory" in enrolled.json["detail"]
    assert not data_dir.exists() and client.get("/readyz").json["storage"] == "missing"
    (tmp_path / "unmounted").rename(data_dir)
    assert client.get("/readyz").status_code == 200
    assert client.post("/api/tts", json={"text": "Hello.", "voiceId": voice_id}).status_code == 200


def test_a_database_behind_the_migrations_is_unready_and_its_routes_say_to_upgrade(unmigrated_app) -> None:
    from flask_migrate import upgrade

    client = unmigrated_app.test_client()
    key = {"Authorization": "Bearer k1"}
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json["status"] == "unavailable"
    assert ready.json["database"] == "not migrated: run flask db upgrade"
    assert ready.json["model"]["loadable"] is True  # the database alone is the reason
    for method, path, body in (("GET", "/api/voices", None), ("POST", "/api/train-voice", {}),
                               ("GET", "/api/jobs", None)):
        refused = client.open(path, method=method, json=body, headers=key)
        assert refused.status_code == 503 and refused.json["code"] == "database_not_migrated", path
        assert "run `flask --app voiceforge db upgrade`" in refused.json["detail"]
        assert "retry" not in refused.json["detail"]
    assert "db upgrade" in client.get("/v1/models", headers=key).json["error"]["message"]
    assert client.get("/api/voices").status_code == 401  # without a key, nothing is told
    assert client.get("/healthz").status_code == 200

    with unmigrated_app.app_context():
        upgrade()
    assert client.get("/readyz").status_code == 200  # no restart needed
    assert client.get("/api/voices", headers=key).status_code == 200


def test_a_job_runner_on_a_database_behind_the_migrations_waits_for_them(
        unmigrated_app, caplog: pytest.LogCaptureFixture) -> None:
    """A runner started before `flask db upgrade` claims nothing and says why once, instead of
    failing on a missing table or column at every poll; once migrated it claims again."""
    from flask_migrate import upgrade

    from voiceforge.jobs.runner import JobRunner

    caplog.set_level(logging.WARNING, logger="voiceforge")
    runner = JobRunner(unmigrated_app, owner="early")
    assert runner.claim() is None and runner.claim() is None
    [warning] = [record.getMessage() for record in caplog.records]
    assert warning.startswith("job runner early waits for the database: ")
    assert warning.endswith("run `flask --app voiceforge db upgrade` first.") or \
        warning.endswith("run `flask --app voiceforge db upgrade`.")
    with unmigrated_app.app_context():
        upgrade()
    assert runner.claim() is None  # nothing queued, and no error: it reads the jobs table now


def test_a_database_migrated_by_newer_code_is_not_refused(make_app) -> None:
    """A rolling deploy: another instance's newer code has migrated past this code's head."""
    from sqlalchemy import text

    from voiceforge.db import db

    app = make_app()
    with app.app_context():
        db.session.execute(text("UPDATE alembic_version SET version_num = '0099'"))
        db.session.commit()
    client = app.test_client()
    assert client.get("/readyz").json["database"] == "ok"
    assert client.get("/api/voices").status_code == 200


@pytest.mark.slow
def test_gunicorn_on_a_database_behind_the_migrations_exits_with_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    bin_dir = Path(sys.executable).parent
    env = {"PATH": str(bin_dir), "VOICEFORGE_INSTANCE_PATH": str(tmp_path), "VOICEFORGE_BIND": "127.0.0.1:0",
           "VOICEFORGE_CONTROL_SOCKET": "", "VOICEFORGE_JOB_RUNNER": "false"}
    subprocess.run([str(bin_dir / "flask"), "--app", "voiceforge", "db", "upgrade", ONE_BEHIND], cwd=root,
                   env=env, check=True, capture_output=True)
    result = subprocess.run([str(bin_dir / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"], cwd=root,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("voiceforge:")] == [
        f"voiceforge: The database schema is at migration {ONE_BEHIND} and this code needs {HEAD}: run "
        "`flask --app voiceforge db upgrade`."]
    assert "Traceback" not in result.stderr and "Booting worker" not in result.stderr
