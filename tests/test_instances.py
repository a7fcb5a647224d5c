"""Several instances on one registry: what one changes, the others see at once.

The two-gunicorn test runs when VOICEFORGE_TEST_POSTGRES_URL names a PostgreSQL server where it may
create databases (.ci/run starts one with scripts/start-postgres.sh); the cache test needs no server.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.audio import data_uri, encode_audio, voice
from tests.support.postgres import fresh_database
from tests.support.server import Server, control_socket_workers, parent_pid, start_server, stop_server
from voiceforge.db import db
from voiceforge.models import Voice

SERVER_URL = os.environ.get("VOICEFORGE_TEST_POSTGRES_URL")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty database on the test server, dropped afterwards."""
    if not SERVER_URL:
        pytest.skip("VOICEFORGE_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL for it)")
    with fresh_database(SERVER_URL, "voiceforge_instances") as url:
        yield url


def recording(seed: int) -> str:
    data, mime = encode_audio(voice(4.0, rate=48000, seed=seed), 48000, "webm/opus")
    return data_uri(data, mime)


def speak(server: Server, voice_id: str) -> requests.Response:
    return server.post("/api/tts", {"text": "Hello from the other instance.", "voiceId": voice_id,
                                    "variability": 0})


@pytest.mark.slow
def test_two_gunicorn_instances_on_one_database_and_data_directory(
        tmp_path: Path, checkpoint_dir: Path, postgres_url: str) -> None:
    run_dir = tmp_path / "run"  # one host's runtime directory, where gunicorn puts control sockets
    shared = {"VOICEFORGE_DATABASE_URL": postgres_url, "VOICEFORGE_DATA_DIR": str(tmp_path / "voices"),
              "VOICEFORGE_JOB_RUNNER": "false", "XDG_RUNTIME_DIR": str(run_dir)}
    for directory in ("a", "b", "run"):
        (tmp_path / directory).mkdir()
    a = start_server(tmp_path / "a", checkpoint_dir, **shared)
    try:
        b = start_server(tmp_path / "b", checkpoint_dir, **shared)
        try:
            # Each instance answers `gunicornc` on its own socket, named by its address.
            for server in (a, b):
                port = server.url.rsplit(":", 1)[1]
                workers = control_socket_workers(run_dir / f"voiceforge-127.0.0.1-{port}.ctl")
                assert workers and {parent_pid(pid) for pid in workers} == {server.process.pid}

            enrolled = a.post("/api/train-voice", {"modelName": "Shared Voice", "audioDataUri": recording(1)})
            assert enrolled.status_code == 200, enrolled.text
            voice_id = enrolled.json()["modelId"]
            # Enrolled on A, speaks on B (twice: the second from B's latent cache).
            first = speak(b, voice_id)
            assert first.status_code == 200, first.text
            assert speak(b, voice_id).json() == first.json()
            listed = requests.get(b.url + "/api/voices", timeout=10).json()["voices"]
            assert voice_id in {v["id"] for v in listed}

            renamed = requests.patch(f"{a.url}/api/voices/{voice_id}", json={"name": "Renamed on A"},
                                     timeout=10)
            assert renamed.status_code == 200
            assert requests.get(f"{b.url}/api/voices/{voice_id}", timeout=10).json()["name"] == "Renamed on A"
            assert speak(b, voice_id).json() == first.json()  # same voice, same audio after the rename

            from_b = b.post("/api/train-voice", {"modelName": "Made on B", "audioDataUri": recording(2)})
            assert from_b.status_code == 200
            assert speak(a, from_b.json()["modelId"]).status_code == 200

            assert requests.delete(f"{a.url}/api/voices/{voice_id}", timeout=10).status_code == 204
            assert requests.get(f"{b.url}/api/voices/{voice_id}", timeout=10).status_code == 404
            assert speak(b, voice_id).status_code == 404
            assert not (tmp_path / "voices" / voice_id).exists()
        finally:
            stop_server(b)
    finally:
        stop_server(a)
    for server in (a, b):
        assert "Traceback" not in server.log.read_text()


def test_a_cached_voice_is_reloaded_when_another_instance_changes_its_row(make_app) -> None:
    """Two apps (two instances' runtimes, each with its own latent cache) on one database and data dir."""
    instance_a, instance_b = make_app(), make_app()
    client_a, client_b = instance_a.test_client(), instance_b.test_client()
    voice_id = client_a.post("/api/train-voice", json={"modelName": "Mutable",
                                                       "audioDataUri": recording(3)}).json["modelId"]
    other_id = client_a.post("/api/train-voice", json={"modelName": "Other",
                                                       "audioDataUri": recording(4)}).json["modelId"]
    body = {"text": "Which voice is this?", "voiceId": voice_id, "variability": 0}
    before = client_b.post("/api/tts", json=body).json["audioDataUri"]  # now in B's cache
    as_other = client_b.post("/api/tts", json={**body, "voiceId": other_id}).json["audioDataUri"]
    assert before != as_other

    with instance_a.app_context():
        voice = db.session.get(Voice, voice_id)
        version = voice.version
        # Instance A replaces the voice's latents in place (as a re-enrolment under the same id would)
        # and changes its row: B must not go on speaking from what it cached.
        data_dir = Path(instance_a.config["DATA_DIR"])
        other = db.session.get(Voice, other_id)
        shutil.copyfile(data_dir / other.latents_path, data_dir / voice.latents_path)
    assert client_a.patch(f"/api/voices/{voice_id}", json={"name": "Changed"}).status_code == 200
    with instance_a.app_context():
        assert db.session.get(Voice, voice_id).version == version + 1
    assert client_b.post("/api/tts", json=body).json["audioDataUri"] == as_other
