"""Logs an operator's tools can read: JSON lines on request, plain text by default, no start-up chatter."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.support.server import start_server, stop_server
from voiceforge import create_app, logs
from voiceforge.config import ConfigError

CANARY = "CANARY-json-7f3e never log me"


@pytest.mark.slow
def test_json_logs_are_one_object_per_line_with_the_request_fields_and_never_the_text(
        tmp_path: Path, checkpoint_dir: Path) -> None:
    server = start_server(tmp_path, checkpoint_dir, VOICEFORGE_LOG_FORMAT="json")
    try:
        spoken = requests.post(server.url + "/api/tts", json={"text": CANARY, "voiceId": "default-male"},
                               headers={"X-Request-ID": "json-log-1"}, timeout=120)
        assert spoken.status_code == 200
        assert spoken.headers["X-Request-ID"] == "json-log-1"
        missing = requests.get(server.url + "/api/voices/missing-0000abcd", timeout=10)
        assert missing.status_code == 404
        generated = missing.headers["X-Request-ID"]
        time.sleep(0.3)
    finally:
        stop_server(server)
    text = server.log.read_text()
    assert "CANARY" not in text
    records = [json.loads(line) for line in text.splitlines()]  # every line, the master's and the runner's
    assert all({"time", "level", "logger", "pid", "message"} <= record.keys() for record in records)

    access_lines = [r for r in records if r["logger"] == "voiceforge.access"]
    [access] = [r for r in access_lines if r.get("request_id") == "json-log-1"]
    assert access["route"] == "/api/tts" and access["status"] == 200 and access["method"] == "POST"
    assert access["duration_ms"] > 0 and access["voice_id"] == "default-male"
    assert access["chars"] == len(CANARY)
    # Everything logged while serving that request carries its id (the model load, the synthesis line).
    assert len([r for r in records if r.get("request_id") == "json-log-1"]) >= 2
    [not_found] = [r for r in access_lines if r.get("request_id") == generated]
    assert not_found["status"] == 404 and not_found["route"] == "/api/voices/<string:voice_id>"
    assert not_found["voice_id"] == "missing-0000abcd"
    loggers = {r["logger"] for r in records}
    assert {"gunicorn.error", "voiceforge.jobs.runner"} <= loggers  # the master and the job runner too
    assert not any(name.startswith("alembic") for name in loggers)
    # transformers' notice that XTTS's GPT-2 config names token ids outside its vocabulary (ids XTTS
    # never uses) would come with every model load and tell an operator nothing to act on.
    assert not [r for r in records if "must be `None` or an integer within the vocabulary" in r["message"]]


@pytest.mark.slow
def test_a_plain_start_logs_text_and_no_alembic_chatter(tmp_path: Path, checkpoint_dir: Path) -> None:
    server = start_server(tmp_path, checkpoint_dir)
    time.sleep(1.0)
    stop_server(server)
    text = server.log.read_text()
    assert "Starting gunicorn" in text and "route=/healthz status=200" in text
    assert "alembic" not in text.lower()
    assert not any(line.startswith("{") for line in text.splitlines())


def test_the_json_formatter_keeps_to_one_line_and_to_the_known_fields() -> None:
    logs.reset_context(request_id="abc", route="/api/tts")
    logs.bind(voice_id="v-1", chars=12)
    try:
        try:
            raise ValueError("line one\nline two")
        except ValueError:
            record = logging.getLogger("voiceforge.test").makeRecord(
                "voiceforge.test", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info(),
                extra={"status": 500, "text": "secret words"})
        line = logs.JsonFormatter().format(record)  # formatted as it is logged: in the request's thread
    finally:
        logs.reset_context()
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "failed here" and parsed["level"] == "ERROR"
    assert parsed["request_id"] == "abc" and parsed["voice_id"] == "v-1" and parsed["chars"] == 12
    assert parsed["status"] == 500 and "line two" in parsed["exception"]
    assert "secret" not in line  # only the known fields are taken from a record


def test_an_unknown_log_format_is_refused_naming_the_variable(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEFORGE_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="VOICEFORGE_LOG_FORMAT=xml is not valid: one of text, json"):
        create_app(instance_path=str(tmp_path))


def migrate_fresh_database(tmp_path: Path, **settings: str) -> str:
    """`flask db upgrade` of a new database with these VOICEFORGE_* settings; what it wrote to stderr."""
    import os
    import subprocess

    environment = {**os.environ, "VOICEFORGE_INSTANCE_PATH": str(tmp_path),
                   "VOICEFORGE_DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}",
                   **{f"VOICEFORGE_{name}": value for name, value in settings.items()}}
    flask = str(Path(sys.executable).parent / "flask")
    result = subprocess.run([flask, "--app", "voiceforge", "db", "upgrade"], cwd=Path(__file__).parents[1],
                            env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_migrations_log_json_lines_when_asked(tmp_path: Path) -> None:
    # compose's web service runs `flask db upgrade` before gunicorn, with VOICEFORGE_LOG_FORMAT=json.
    stderr = migrate_fresh_database(tmp_path, LOG_FORMAT="json")
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert any(line["message"].startswith("Running upgrade") for line in lines), lines


def test_migrations_log_in_the_services_text_format_and_follow_its_level(tmp_path: Path) -> None:
    lines = migrate_fresh_database(tmp_path / "info").splitlines()
    upgrades = [line for line in lines if "Running upgrade" in line]
    # time LEVEL [pid] logger: message, as every other line of the service
    assert upgrades and all(re.match(r"\S+ \S+ INFO \[\d+\] alembic\.\S+: Running upgrade", line)
                            for line in upgrades), lines
    assert "Running upgrade" not in migrate_fresh_database(tmp_path / "warning", LOG_LEVEL="warning")
