"""GET/PATCH/DELETE /api/voices: the registry over HTTP."""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete
from sqlalchemy.exc import OperationalError

from tests.support.registry import add_stored_voice, files_under
from voiceforge.db import db
from voiceforge.models import Voice
from voiceforge.services import voices


@pytest.fixture
def stored(app, data_dir: Path) -> Voice:
    with app.app_context():
        voice = add_stored_voice(data_dir, "Grandma Rose")
        return voices.get_voice(voice.id)


def test_list_has_cloned_voices_then_builtin_speakers(client, stored: Voice) -> None:
    listed = client.get("/api/voices").json["voices"]
    assert listed[0]["id"] == stored.id
    assert listed[0]["name"] == "Grandma Rose" and listed[0]["kind"] == "cloned"
    assert listed[0]["status"] == "ready" and listed[0]["language"] == "en"
    builtin = {v["id"]: v for v in listed if v["kind"] == "builtin"}
    assert "default-ana-florence" in builtin
    assert {"default-female", "default-male"} <= set(builtin)


def test_show_one_voice(client, stored: Voice) -> None:
    body = client.get(f"/api/voices/{stored.id}").json
    assert body["id"] == stored.id and body["createdAt"]


def test_timestamps_are_utc_with_their_offset_whether_just_changed_or_reloaded(client, stored: Voice) -> None:
    """SQLite drops a timestamp's zone: a client must still get one ISO 8601 form it can compare."""
    renamed = client.patch(f"/api/voices/{stored.id}", json={"name": "Nana Rose"}).json
    reloaded = client.get(f"/api/voices/{stored.id}").json
    listed = next(v for v in client.get("/api/voices").json["voices"] if v["id"] == stored.id)
    for body in (renamed, reloaded, listed):
        created, updated = (datetime.fromisoformat(body[key]) for key in ("createdAt", "updatedAt"))
        assert created.utcoffset() == updated.utcoffset() == timedelta(0), body
        assert created <= updated <= datetime.now(UTC)
    assert renamed["updatedAt"] == reloaded["updatedAt"] == listed["updatedAt"]


@pytest.mark.parametrize("voice_id", ["nope", "..", "%2e%2e", "a" * 3000, "UPPER", "x%00y"])
def test_unknown_or_hostile_ids_are_404(client, voice_id: str) -> None:
    for method in ("get", "delete"):
        response = getattr(client, method)(f"/api/voices/{voice_id}")
        assert response.status_code == 404, (method, voice_id)
        assert response.json["detail"]


def test_rename(client, stored: Voice) -> None:
    response = client.patch(f"/api/voices/{stored.id}", json={"name": "  Nana Rose "})
    assert response.status_code == 200
    assert response.json["name"] == "Nana Rose"
    assert client.get(f"/api/voices/{stored.id}").json["name"] == "Nana Rose"


@pytest.mark.parametrize(("body", "status"), [
    ({"name": ""}, 422), ({"name": "   "}, 422), ({"name": "x" * 101}, 422), ({"name": "a\u200bb"}, 422),
    ({}, 400), ({"name": 5}, 400), ([], 400),
])
def test_bad_rename_changes_nothing(client, stored: Voice, body: object, status: int) -> None:
    response = client.patch(f"/api/voices/{stored.id}", json=body)
    assert response.status_code == status
    assert response.json["detail"]
    assert client.get(f"/api/voices/{stored.id}").json["name"] == "Grandma Rose"


def test_malformed_json_is_400(client, stored: Voice) -> None:
    response = client.patch(f"/api/voices/{stored.id}", data="{nope", content_type="application/json")
    assert response.status_code == 400
    assert "JSON" in response.json["detail"]


def test_delete_removes_row_and_files_together(client, stored: Voice, data_dir: Path) -> None:
    assert files_under(data_dir / stored.id)
    response = client.delete(f"/api/voices/{stored.id}")
    assert response.status_code == 204
    assert client.get(f"/api/voices/{stored.id}").status_code == 404
    assert files_under(data_dir) == []
    assert client.delete(f"/api/voices/{stored.id}").status_code == 404


def test_delete_keeps_files_when_the_row_cannot_be_deleted(app, stored: Voice, data_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_commit() -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(voices, "commit", broken_commit)
    with app.app_context(), pytest.raises(RuntimeError):
        voices.delete_voice(stored.id, data_dir)
    assert files_under(data_dir) == [f"{stored.id}/latents.pth", f"{stored.id}/reference.wav"]
    with app.app_context():
        assert voices.find_voice(stored.id) is not None


def _deleted_by_another_request(read: Callable[[str], Voice | None]) -> Callable[[str], Voice | None]:
    """`read`, after which another request deletes the voice's row (the race a real delete can win)."""

    def read_then_deleted(voice_id: str) -> Voice | None:
        voice = read(voice_id)
        with db.engine.begin() as other:
            other.execute(delete(Voice).where(Voice.id == voice_id))
        return voice

    return read_then_deleted


def test_a_rename_or_delete_that_loses_the_race_to_a_delete_is_404(client, stored: Voice,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(voices, "get_voice", _deleted_by_another_request(voices.get_voice))
    renamed = client.patch(f"/api/voices/{stored.id}", json={"name": "Too Late"})
    assert renamed.status_code == 404 and renamed.json["detail"] == f"Voice {stored.id!r} not found."
    with client.application.app_context():
        add_stored_voice(Path(client.application.config["DATA_DIR"]), "Deleted Twice")
    second = next(v for v in client.get("/api/voices").json["voices"] if v["name"] == "Deleted Twice")
    assert client.delete(f"/api/voices/{second['id']}").status_code == 404


def test_speaking_with_a_voice_deleted_meanwhile_is_404_not_lost_files(
        client, stored: Voice, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deleted = _deleted_by_another_request(voices.find_voice)

    def deleted_with_its_files(voice_id: str) -> Voice | None:
        voice = deleted(voice_id)
        shutil.rmtree(data_dir / voice_id)  # the delete removes the files after the row
        return voice

    monkeypatch.setattr(voices, "find_voice", deleted_with_its_files)
    spoken = client.post("/api/tts", json={"text": "Hello.", "voiceId": stored.id})
    assert spoken.status_code == 404 and "not found" in spoken.json["detail"]


def test_delete_on_a_read_only_data_directory_is_503_and_changes_nothing(
        client, stored: Voice, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == data_dir
                        else real_access(path, mode))  # what a read-only mount answers (root included)
    response = client.delete(f"/api/voices/{stored.id}")
    assert response.status_code == 503 and "could not be deleted" in response.json["detail"]
    monkeypatch.undo()
    assert client.get(f"/api/voices/{stored.id}").json["status"] == "ready"
    assert files_under(data_dir) == [f"{stored.id}/latents.pth", f"{stored.id}/reference.wav"]


def test_a_full_disk_under_the_database_is_507_not_retry_later(client, stored: Voice,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk() -> None:
        db.session.rollback()
        raise OperationalError("UPDATE voices", {}, sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(voices, "commit", full_disk)
    response = client.patch(f"/api/voices/{stored.id}", json={"name": "Nana Rose"})
    assert response.status_code == 507 and "disk is full" in response.json["detail"]
    assert "Retry-After" not in response.headers  # retrying cannot help until someone frees space
    monkeypatch.undo()
    assert client.get(f"/api/voices/{stored.id}").json["name"] == "Grandma Rose"


def test_builtin_voices_can_be_shown_but_not_changed(client) -> None:
    shown = client.get("/api/voices/default-ana-florence")
    assert shown.status_code == 200
    assert shown.json["kind"] == "builtin" and shown.json["name"] == "Ana Florence"
    assert client.get("/api/voices/default-male").json["name"] == "Damien Black (default-male)"
    # Any other default-… id speaks with the default speaker (/api/tts), and is shown so, not 404.
    other = client.get("/api/voices/default-nobody")
    assert other.status_code == 200, other.json
    assert other.json["speaker"] == "Ana Florence" and other.json["name"] == "Ana Florence (default-nobody)"
    assert other.json["id"] == "default-nobody" and other.json["kind"] == "builtin"
    for response in (client.patch("/api/voices/default-ana-florence", json={"name": "Mine"}),
                     client.delete("/api/voices/default-ana-florence")):
        assert response.status_code == 409 and "built-in" in response.json["detail"]
