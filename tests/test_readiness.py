"""Readiness tells the truth: 503 with the fix when no model can be provided, 200 when it can."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

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
                                               "matmul": "onednn", "cudaGraphs": False}


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
