"""API keys and privacy: no key, no access; the text to speak never reaches the logs."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from voiceforge import create_app
from voiceforge.config import ConfigError

KEY = "s3cret-key-for-tests"
NEXT_ORIGIN = "http://localhost:9002"


@pytest.fixture
def locked_client(make_app):
    return make_app(API_KEYS=[KEY]).test_client()


def test_keys_given_as_one_string_in_python_config_are_refused_at_start(make_app) -> None:
    """`API_KEYS = "a,b"` in instance/config.py would otherwise make every single letter a key."""
    with pytest.raises(ConfigError) as refused:
        make_app(API_KEYS=f"{KEY},other-key")
    assert refused.value.message.startswith("VOICEFORGE_API_KEYS=… is not valid: a list of keys")
    assert KEY not in refused.value.message


PROTECTED = [("get", "/api/voices", None), ("get", "/api/voices/someone-00000000", None),
             ("post", "/api/tts", {"text": "Hi", "voiceId": "default-female"}),
             ("post", "/api/train-voice", {"modelName": "x", "audioDataUri": "data:audio/wav;base64,AAAA"}),
             ("patch", "/api/voices/someone-00000000", {"name": "x"}),
             ("delete", "/api/voices/someone-00000000", None), ("get", "/api/nope", None)]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}, {"X-API-Key": "wrong"},
    {"Authorization": "Bearer "}, {"X-API-Key": KEY[:-1]}, {"X-API-Key": KEY + "x"},
])
def test_requests_without_a_valid_key_are_401(locked_client, method: str, path: str, body: object,
                                               headers: dict) -> None:
    response = getattr(locked_client, method)(path, json=body, headers=headers)
    assert response.status_code == 401
    assert "API key" in response.json["detail"]
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {KEY}"},
                                     {"X-API-Key": KEY}])
def test_a_valid_key_lets_the_request_in(locked_client, headers: dict) -> None:
    response = locked_client.get("/api/voices", headers=headers)
    assert response.status_code == 200


def test_health_docs_and_preflight_stay_open(locked_client) -> None:
    assert locked_client.get("/healthz").status_code == 200
    assert locked_client.get("/readyz").status_code == 200
    assert locked_client.get("/api/openapi.json").status_code == 200
    preflight = locked_client.options("/api/tts", headers={
        "Origin": NEXT_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == NEXT_ORIGIN
    denied = locked_client.get("/api/voices", headers={"Origin": NEXT_ORIGIN})
    assert denied.status_code == 401
    assert denied.headers["Access-Control-Allow-Origin"] == NEXT_ORIGIN  # the web app can read the error


def test_keys_can_come_from_a_file(make_app, tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# studio\nfile-key-1\n\nfile-key-2\n")
    client = make_app(API_KEYS_FILE=str(key_file)).test_client()
    assert client.get("/api/voices", headers={"X-API-Key": "file-key-2"}).status_code == 200
    assert client.get("/api/voices", headers={"X-API-Key": "# studio"}).status_code == 401
    assert client.get("/api/voices").status_code == 401


def test_a_key_file_saved_with_a_bom_keeps_its_first_key(make_app, tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_bytes("\ufefffile-key-1\nfile-key-2\n".encode())  # as Windows Notepad saves it
    client = make_app(API_KEYS_FILE=str(key_file)).test_client()
    assert client.get("/api/voices", headers={"X-API-Key": "file-key-1"}).status_code == 200


@pytest.mark.parametrize(("content", "allowed"), [
    (b"", "holds none"),
    (b"# keys go here\n\n   # one per line\n", "holds none"),  # a file of comments only
    ("file-key-1\n".encode("utf-16"), "not UTF-8"),  # PowerShell's `>`
    ("file-key-1\ncl\u00e9-secr\u00e8te\n".encode(), "line 2 holds another character"),
    (b"file-key-1\x00\n", "line 1 holds another character"),
])
def test_a_key_file_without_a_usable_key_is_refused_at_start(
        tmp_path: Path, content: bytes, allowed: str) -> None:
    """An empty secret mount must not turn keys off, and a key no header can carry must not pass unseen."""
    key_file = tmp_path / "keys.txt"
    key_file.write_bytes(content)
    with pytest.raises(ConfigError) as refused:
        create_app({"API_KEYS_FILE": str(key_file)}, instance_path=str(tmp_path))
    message = refused.value.message
    assert message.startswith(f"VOICEFORGE_API_KEYS_FILE={key_file} is not valid: ") and allowed in message
    assert "\n" not in message and "file-key-1" not in message and "secr" not in message


@pytest.mark.parametrize(("value", "allowed"), [
    (" , ", "names none"), (f"{KEY},cl\u00e9-secr\u00e8te", "key 2 holds another character"),
])
def test_keys_in_the_environment_that_yield_no_usable_key_are_refused_at_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, allowed: str) -> None:
    monkeypatch.setenv("VOICEFORGE_API_KEYS", value)
    with pytest.raises(ConfigError) as refused:
        create_app(instance_path=str(tmp_path))
    assert refused.value.message.startswith("VOICEFORGE_API_KEYS=") and allowed in refused.value.message
    assert KEY not in refused.value.message and "secr" not in refused.value.message


def test_a_list_of_blank_keys_in_python_config_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        create_app({"API_KEYS": ["", "  "]}, instance_path=str(tmp_path))
    assert refused.value.message.startswith("VOICEFORGE_API_KEYS=… is not valid: at least one key")


def test_an_empty_keys_variable_still_means_keys_off(make_app, monkeypatch: pytest.MonkeyPatch) -> None:
    """compose.yaml passes VOICEFORGE_API_KEYS through empty when the operator sets none."""
    monkeypatch.setenv("VOICEFORGE_API_KEYS", "")
    assert make_app().test_client().get("/api/voices").status_code == 200


def test_without_keys_the_api_is_open(client) -> None:
    assert client.get("/api/voices").status_code == 200


def test_access_log_has_one_line_per_request_and_never_the_text(
        client, caplog: pytest.LogCaptureFixture) -> None:
    canary = "CANARY-7f3a9 the secret words"
    caplog.set_level(logging.DEBUG)
    response = client.post("/api/tts", json={"text": canary, "voiceId": "default-female", "variability": 0},
                           headers={"X-Request-ID": "req-canary-1"})
    assert response.status_code == 200
    client.post("/api/tts", json={"text": canary, "voiceId": "nobody-00000000"})
    client.post("/api/train-voice",
                json={"modelName": canary, "audioDataUri": f"data:audio/wav;base64,{canary}"})
    access = [r.getMessage() for r in caplog.records if r.name == "voiceforge.access"]
    assert len(access) == 3
    assert "method=POST route=/api/tts status=200" in access[0] and "request_id=req-canary-1" in access[0]
    info_and_up = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "CANARY" not in info_and_up


def test_a_streamed_body_without_a_key_is_refused_before_it_is_read(make_app) -> None:
    # A chunked body has no declared length: the body limit reads it (up to the limit) to measure it,
    # which a caller without a key must not be able to make the server do.
    client = make_app(API_KEYS=[KEY], MAX_BODY_BYTES=1000).test_client()
    body = io.BytesIO(b'{"text": "' + b"a" * 5000 + b'", "voiceId": "default-female"}')
    response = client.post("/api/tts", input_stream=body, environ_overrides={"wsgi.input_terminated": True},
                           headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert response.status_code == 401 and body.tell() == 0  # not a byte of it read
