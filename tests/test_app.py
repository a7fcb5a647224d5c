"""The app factory, configuration precedence, health probes, OpenAPI, errors and CORS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from voiceforge import create_app
from voiceforge.config import DEFAULTS

NEXT_ORIGIN = "http://localhost:9002"


def test_creating_the_app_imports_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from voiceforge import create_app; "
        f"app = create_app({{'DATABASE_URL': 'sqlite:///{tmp_path}/x.db', 'DATA_DIR': '{tmp_path}'}}); "
        "print(sorted(m for m in ('torch', 'TTS', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "[]"


def test_defaults_apply_without_configuration(tmp_path: Path) -> None:
    app = create_app(instance_path=str(tmp_path))
    assert app.config["DEFAULT_LANGUAGE"] == "en"
    assert app.config["CORS_ORIGINS"] == ["http://localhost:9002", "http://127.0.0.1:9002"]
    assert app.config["DATABASE_URL"] == f"sqlite:///{tmp_path / 'voiceforge.db'}"
    assert app.config["DATA_DIR"] == str((tmp_path / "voices").resolve())
    assert app.config["MAX_CONTENT_LENGTH"] == DEFAULTS["MAX_BODY_BYTES"]


def test_instance_file_then_environment_then_arguments_take_precedence(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.py").write_text(
        "DEFAULT_LANGUAGE = 'de'\nDEVICE = 'cpu'\nMAX_TEXT_CHARS = 100\nLOG_LEVEL = 'WARNING'\n")
    monkeypatch.setenv("VOICEFORGE_DEVICE", "cuda")
    monkeypatch.setenv("VOICEFORGE_MAX_TEXT_CHARS", "200")
    monkeypatch.setenv("VOICEFORGE_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("VOICEFORGE_VOICE_ALIASES", "default-narrator=Ana Florence")
    app = create_app({"MAX_TEXT_CHARS": 300}, instance_path=str(tmp_path))
    assert app.config["DEFAULT_LANGUAGE"] == "de"  # instance file over default
    assert app.config["DEVICE"] == "cuda"  # environment over instance file
    assert app.config["MAX_TEXT_CHARS"] == 300  # explicit argument over environment
    assert app.config["CORS_ORIGINS"] == ["https://a.example", "https://b.example"]
    assert app.config["VOICE_ALIASES"] == {"default-narrator": "Ana Florence"}


def test_nonsense_in_the_environment_fails_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEFORGE_MAX_TEXT_CHARS", "lots")
    with pytest.raises(ValueError, match="VOICEFORGE_MAX_TEXT_CHARS"):
        create_app(instance_path=str(tmp_path))


def test_healthz(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_reports_the_database_and_does_not_load_the_model(make_app, checkpoint_dir: Path) -> None:
    app = make_app(INFERENCE_QUEUE_SIZE=2)  # an engine of its own, not the session's shared one
    response = app.test_client().get("/readyz")
    assert response.status_code == 200
    body = response.json
    assert body["status"] == "ready" and body["database"] == "ok"
    assert body["model"]["source"] == str(checkpoint_dir)
    assert body["model"]["loaded"] is False and body["model"]["loadable"] is True
    from voiceforge.runtime import get_runtime

    assert get_runtime(app).engine.loaded is False


def test_openapi_document_describes_every_route(client) -> None:
    spec = client.get("/api/openapi.json").json
    assert spec["info"]["title"] == "VoiceForge"
    for path in ("/api/tts", "/api/train-voice", "/api/voices", "/api/voices/{voice_id}",
                 "/healthz", "/readyz"):
        assert path in spec["paths"], path
    assert "422" in spec["paths"]["/api/tts"]["post"]["responses"]
    streamed = spec["paths"]["/api/tts/stream"]["post"]["responses"]["200"]
    assert streamed["description"] and {"audio/wav", "audio/mpeg", "audio/pcm"} <= set(streamed["content"])
    assert client.get("/api/docs").status_code == 200


@pytest.mark.parametrize(("method", "path", "status"), [
    ("get", "/nope", 404), ("get", "/api/nope", 404), ("delete", "/api/tts", 405),
    ("get", "/api/train-voice", 405), ("put", "/api/voices", 405),
])
def test_unknown_routes_and_methods_answer_json(client, method: str, path: str, status: int) -> None:
    response = getattr(client, method)(path)
    assert response.status_code == status
    assert response.is_json and response.json["detail"]


def test_every_response_carries_a_request_id(client) -> None:
    assert len(client.get("/healthz").headers["X-Request-ID"]) >= 16
    echoed = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["X-Request-ID"] == "abc-123"
    forged = client.get("/healthz", headers={"X-Request-ID": "bad id; with spaces"})
    assert forged.headers["X-Request-ID"] != "bad id; with spaces"


def test_cors_allows_the_web_app_origin(client) -> None:
    response = client.get("/api/voices", headers={"Origin": NEXT_ORIGIN})
    assert response.headers["Access-Control-Allow-Origin"] == NEXT_ORIGIN
    preflight = client.options("/api/tts", headers={
        "Origin": NEXT_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == NEXT_ORIGIN
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]


def test_cors_ignores_an_unlisted_origin(client) -> None:
    response = client.get("/api/voices", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = client.options("/api/tts", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_cors_origins_come_from_configuration(make_app) -> None:
    client = make_app(CORS_ORIGINS=["https://studio.example"]).test_client()
    allowed = client.get("/api/voices", headers={"Origin": "https://studio.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://studio.example"
    assert "Access-Control-Allow-Origin" not in client.get(
        "/api/voices", headers={"Origin": NEXT_ORIGIN}).headers


def test_one_status_has_one_error_code_whoever_refused_the_request(client) -> None:
    """The schemas (through werkzeug) and the services refuse with the same stable codes."""
    schema_422 = client.post("/api/tts", json={"text": "Hi.", "voiceId": "default-female", "speed": 3})
    service_422 = client.post("/api/tts", json={"text": "Hi.", "voiceId": "default-female", "language": "xx"})
    assert (schema_422.status_code, service_422.status_code) == (422, 422)
    assert schema_422.json["code"] == service_422.json["code"] == "unprocessable"
    not_json = client.post("/api/tts", data="<a/>", content_type="application/xml")
    assert not_json.status_code == 415 and not_json.json["code"] == "unsupported_media"


def test_a_cors_origin_written_with_a_trailing_slash_still_matches(make_app) -> None:
    client = make_app(CORS_ORIGINS="https://studio.example.com/").test_client()  # as the address bar shows it
    response = client.get("/api/voices", headers={"Origin": "https://studio.example.com"})
    assert response.headers.get("Access-Control-Allow-Origin") == "https://studio.example.com"


def test_body_over_the_limit_is_413_json(make_app) -> None:
    client = make_app(MAX_BODY_BYTES=1000).test_client()
    response = client.post("/api/tts", data=json.dumps({"text": "x" * 5000, "voiceId": "default-x"}),
                           content_type="application/json")
    assert response.status_code == 413
    assert response.json["detail"] and response.json["code"] == "payload_too_large"
