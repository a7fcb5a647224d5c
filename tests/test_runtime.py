"""The runtime and its seams: settings checked at start, one catalogue, two-step synthesis, API families."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.checkpoint import build_checkpoint
from voiceforge import create_app
from voiceforge.config import ConfigError
from voiceforge.errors import Unprocessable
from voiceforge.runtime import get_runtime
from voiceforge.services import synthesis
from voiceforge.services.engine import Engine

ROOT = Path(__file__).resolve().parent.parent


# -- settings -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("variable", "value", "allowed"), [
    ("DEFAULT_LANGUAGE", "xx", "zh-cn"),
    ("LOG_LEVEL", "loud", "WARNING"),
    ("DEVICE", "gpu", "cuda:N"),
    ("MAX_TEXT_CHARS", "0", "at least 1"),
    ("INFERENCE_QUEUE_SIZE", "-2", "at least 1"),
    ("VOICE_ALIASES", "narrator=Ana Florence", "default-"),
    ("MAX_AUDIO_BYTES", "lots", "integer"),
    ("CPU_MATMUL", "mkl", "onednn"),
    ("VOCODER_DTYPE", "int8", "bfloat16"),
    ("MAX_BODY_BYTES", "-5", "at least 1"),
    ("DB_BUSY_TIMEOUT_MS", "-1", "at least 0"),
    ("CUDA_GRAPHS", "maybe", "true or false"),
    ("CUDA_STEP", "cutlass", "triton"),
    ("JOB_RUNNER", "nah", "true or false"),
    ("API_KEYS_FILE", "/nonexistent/keys.txt", "a readable file"),
])
def test_a_bad_setting_is_refused_at_start_naming_variable_value_and_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, allowed: str) -> None:
    monkeypatch.setenv(f"VOICEFORGE_{variable}", value)
    with pytest.raises(ConfigError) as refused:
        create_app(instance_path=str(tmp_path))
    message = refused.value.message
    assert f"VOICEFORGE_{variable}={value}" in message and allowed in message
    assert "\n" not in message


def test_a_database_url_without_an_installed_driver_is_refused_without_showing_its_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for url, shown in (("mysql://app:s3cret@db/voices", "mysql://app:***@db/voices"), ("not a url", "…")):
        monkeypatch.setenv("VOICEFORGE_DATABASE_URL", url)
        with pytest.raises(ConfigError) as refused:
            create_app(instance_path=str(tmp_path))
        assert refused.value.message.startswith(f"VOICEFORGE_DATABASE_URL={shown} is not valid: ")
        assert "postgresql+psycopg://" in refused.value.message and "s3cret" not in refused.value.message


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_a_plain_postgres_url_means_the_installed_psycopg_driver(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheme: str) -> None:
    monkeypatch.setenv("VOICEFORGE_DATABASE_URL", f"{scheme}://app:pw@localhost:5432/voices")
    app = create_app(instance_path=str(tmp_path))  # nothing connects until a query
    assert app.config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://app:pw@localhost:5432/voices"


@pytest.mark.parametrize("setting", ["DECODER_DTYPE", "VOCODER_DTYPE"])
def test_float16_decoding_is_refused_on_a_cpu_and_bfloat16_is_allowed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    monkeypatch.setenv("VOICEFORGE_DEVICE", "cpu")
    monkeypatch.setenv(f"VOICEFORGE_{setting}", "float16")
    with pytest.raises(ConfigError) as refused:
        create_app(instance_path=str(tmp_path))
    assert f"VOICEFORGE_{setting}=float16" in refused.value.message and "bfloat16" in refused.value.message
    monkeypatch.setenv(f"VOICEFORGE_{setting}", "bfloat16")
    runtime = get_runtime(create_app(instance_path=str(tmp_path)))
    assert getattr(runtime.settings, setting.lower()) == getattr(runtime.engine.settings, setting.lower())
    assert getattr(runtime.engine.settings, setting.lower()) == "bfloat16"  # reaches the engine


@pytest.mark.parametrize("level", ["info", "Warning", "DEBUG", " error "])
def test_log_levels_are_case_insensitive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    monkeypatch.setenv("VOICEFORGE_LOG_LEVEL", level)
    app = create_app(instance_path=str(tmp_path))
    assert get_runtime(app).settings.log_level == level.strip().upper()
    assert logging.getLogger("voiceforge").level == logging.getLevelName(level.strip().upper())


def test_a_flask_command_with_a_bad_setting_prints_one_line_and_fails(tmp_path: Path) -> None:
    env = {"PATH": str(Path(sys.executable).parent), "VOICEFORGE_INSTANCE_PATH": str(tmp_path),
           "VOICEFORGE_DEFAULT_LANGUAGE": "xx"}
    result = subprocess.run([str(Path(sys.executable).parent / "flask"), "--app", "voiceforge", "voices",
                             "list"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: VOICEFORGE_DEFAULT_LANGUAGE=xx is not valid: one of en, de, fr, es, it, pt, pl, zh-cn, ar, "
        "cs, ru, nl, tr, ja, hu, ko, hi."]


@pytest.mark.slow
@pytest.mark.parametrize("variable", ["VOICEFORGE_WORKERS", "VOICEFORGE_TIMEOUT"])
def test_gunicorn_with_a_bad_number_of_its_own_exits_with_one_line(tmp_path: Path, variable: str) -> None:
    env = {"PATH": str(Path(sys.executable).parent), "VOICEFORGE_INSTANCE_PATH": str(tmp_path),
           "VOICEFORGE_BIND": "127.0.0.1:0", variable: "abc"}
    result = subprocess.run([str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py",
                             "wsgi:app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    least = 1 if variable == "VOICEFORGE_WORKERS" else 0
    assert result.stderr.strip().splitlines() == [
        f"voiceforge: {variable}=abc is not valid: an integer of at least {least}."]


@pytest.mark.slow
def test_gunicorn_with_a_bad_setting_exits_at_once_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": str(Path(sys.executable).parent), "VOICEFORGE_INSTANCE_PATH": str(tmp_path),
           "VOICEFORGE_DEFAULT_LANGUAGE": "xx", "VOICEFORGE_BIND": "127.0.0.1:0"}
    result = subprocess.run([str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py",
                             "wsgi:app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "VOICEFORGE_DEFAULT_LANGUAGE" in line]
    assert errors == ["voiceforge: VOICEFORGE_DEFAULT_LANGUAGE=xx is not valid: one of en, de, fr, es, it, "
                      "pt, pl, zh-cn, ar, cs, ru, nl, tr, ja, hu, ko, hi."]
    assert "Traceback" not in result.stderr and "Booting worker" not in result.stderr


# -- built-in voices with any checkpoint ----------------------------------------------------------
@pytest.fixture(scope="module")
def unofficial_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint whose speakers are not named like the official ones."""
    return build_checkpoint(tmp_path_factory.mktemp("unofficial") / "xtts", speakers=("Zoe Z", "Bob B"))


def test_aliases_speak_with_a_documented_fallback_when_the_checkpoint_lacks_their_speakers(
        make_app, unofficial_checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    client = make_app(MODEL_DIR=str(unofficial_checkpoint)).test_client()
    caplog.set_level(logging.WARNING, logger="voiceforge")
    spoken = {}
    for voice_id in ("default-male", "default-female", "default-narrator", "default-male", "default-zoe-z"):
        body = {"text": "Hello there.", "voiceId": voice_id, "variability": 0}
        response = client.post("/api/tts", json=body)
        assert response.status_code == 200, response.json
        spoken[voice_id] = response.json["audioDataUri"]
    # The fallback (the default speaker if present, else the first speaker alphabetically) is Bob B.
    bob = client.post("/api/tts", json={"text": "Hello there.", "voiceId": "default-bob-b", "variability": 0})
    assert spoken["default-male"] == spoken["default-female"] == spoken["default-narrator"] == bob.json[
        "audioDataUri"]
    assert spoken["default-zoe-z"] != spoken["default-male"]
    warnings = [r.getMessage() for r in caplog.records if "is not in this model" in r.getMessage()]
    # One warning per missing name: Damien Black (default-male), Ana Florence (female and the default).
    assert len(warnings) == 2 and all("'Bob B' speaks instead" in w for w in warnings)

    listed = {v["id"]: v for v in client.get("/api/voices").json["voices"] if v["kind"] == "builtin"}
    assert listed["default-male"]["speaker"] == listed["default-female"]["speaker"] == "Bob B"
    assert listed["default-zoe-z"]["speaker"] == "Zoe Z"


def test_the_voice_list_shows_which_speaker_each_alias_speaks_with(client) -> None:
    listed = {v["id"]: v for v in client.get("/api/voices").json["voices"]}
    assert listed["default-female"]["speaker"] == "Ana Florence"
    assert listed["default-male"]["speaker"] == "Damien Black"
    assert listed["default-claribel-dervla"]["speaker"] == "Claribel Dervla"


def test_configured_aliases_add_to_the_default_ones_and_override_those_they_name(
        make_app, monkeypatch: pytest.MonkeyPatch) -> None:
    """One alias added must not drop default-male, which OpenAI's male voices (echo, onyx…) speak as."""
    monkeypatch.setenv("VOICEFORGE_VOICE_ALIASES", "default-narrator=Claribel Dervla")
    client = make_app().test_client()
    voices = client.get("/api/voices").json["voices"]
    listed = {v["id"]: v["speaker"] for v in voices if v["kind"] == "builtin"}
    assert listed["default-narrator"] == "Claribel Dervla"
    assert listed.get("default-male") == "Damien Black" and listed.get("default-female") == "Ana Florence"
    assert client.get("/api/voices/default-male").json["speaker"] == "Damien Black"

    def spoken(voice_id: str) -> str:
        body = {"text": "Hello there.", "voiceId": voice_id, "variability": 0}
        response = client.post("/api/tts", json=body)
        assert response.status_code == 200, response.json
        return response.json["audioDataUri"]

    assert spoken("default-male") == spoken("default-damien-black")  # not the default speaker's voice
    assert spoken("default-narrator") == spoken("default-claribel-dervla")

    monkeypatch.setenv("VOICEFORGE_VOICE_ALIASES", "default-male=Claribel Dervla")  # a default one, changed
    aliases = get_runtime(make_app()).settings.voice_aliases
    assert aliases == {"default-female": "Ana Florence", "default-male": "Claribel Dervla"}


# -- languages reach the model --------------------------------------------------------------------
def test_the_requested_language_reaches_the_model(client, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.audio import data_uri, encode_audio, voice

    languages: list[str] = []
    real = Engine.speak

    def recording(self: Engine, texts: list[str], language: str, *args: object, **kwargs: object) -> list:
        languages.append(language)
        return real(self, texts, language, *args, **kwargs)

    monkeypatch.setattr(Engine, "speak", recording)
    data, mime = encode_audio(voice(4.0, rate=48000), 48000, "wav")
    russian = client.post("/api/train-voice", json={"modelName": "Ru", "audioDataUri": data_uri(data, mime),
                                                    "language": "ru"}).json["modelId"]
    cases = [({"voiceId": russian}, "ru"),  # the voice's language
             ({"voiceId": russian, "language": "de"}, "de"),  # the request's wins
             ({"voiceId": "default-female"}, "en"),  # built-in: the server's default
             ({"voiceId": "default-female", "language": "ZH"}, "zh-cn")]  # normalised
    for body, expected in cases:
        languages.clear()
        response = client.post("/api/tts", json={"text": "Hallo.", "variability": 0, **body})
        assert response.status_code == 200, response.json
        assert languages == [expected], body


# -- two-step synthesis ---------------------------------------------------------------------------
def test_a_worker_without_a_request_speaks_exactly_as_the_api_does(app, client) -> None:
    sentence = "This sentence is long enough that two of them do not fit into one chunk of speech. " * 2
    body = {"text": sentence + sentence, "voiceId": "default-male", "variability": 0}
    over_http = base64.b64decode(client.post("/api/tts", json=body).json["audioDataUri"].split(",", 1)[1])
    with app.app_context():  # what a job worker or CLI command has: an app, no request
        speech = synthesis.prepare(get_runtime(app), body["text"], body["voiceId"], variability=0)
        chunks = list(speech.chunks())
    from voiceforge.audio.encode import encode_wav

    assert len(chunks) == 3  # a chunk, the pause, a chunk
    assert encode_wav(np.concatenate(chunks), speech.rate) == over_http


def test_prepare_refuses_unspeakable_text_before_any_audio(app, monkeypatch: pytest.MonkeyPatch) -> None:
    synthesised: list[str] = []
    monkeypatch.setattr(Engine, "speak", lambda self, texts, *a, **k: synthesised.extend(texts))
    runtime = get_runtime(app)
    with app.app_context(), pytest.raises(Unprocessable, match="spell out"):
        synthesis.prepare(runtime, "Good morning. मेरे पास 5 सेब हैं।", "default-female", language="hi")
    assert synthesised == []
    with runtime.engine.reserve():  # the refused request holds no queue place
        pass


def test_the_queue_place_is_released_when_a_consumer_stops_early(make_app) -> None:
    app = make_app(INFERENCE_QUEUE_SIZE=1)
    runtime = get_runtime(app)
    with app.app_context():
        speech = synthesis.prepare(runtime, "First. Second. Third.", "default-female", variability=0)
        stream = speech.chunks()
        next(stream)
        with pytest.raises(Exception, match="busy"):
            synthesis.prepare(runtime, "Meanwhile.", "default-female")
        stream.close()  # a client that disconnects
        synthesis.prepare(runtime, "Now there is room.", "default-female").close()
        synthesis.prepare(runtime, "And again.", "default-female").close()


# -- API families ---------------------------------------------------------------------------------
def test_a_request_with_several_credentials_needs_every_one_valid(make_app) -> None:
    client = make_app(API_KEYS=["good-key"]).test_client()
    assert client.get("/api/voices", headers={"X-API-Key": "good-key",
                                              "Authorization": "Bearer good-key"}).status_code == 200
    for headers in ({"X-API-Key": "good-key", "Authorization": "Bearer bad"},
                    {"X-API-Key": "bad", "Authorization": "Bearer good-key"},
                    {"X-API-Key": "good-key", "Authorization": "Basic Z29vZC1rZXk="}):
        response = client.get("/api/voices", headers=headers)
        assert response.status_code == 401 and "API key" in response.json["detail"], headers


def test_the_openapi_document_carries_the_request_constraints(client) -> None:
    schemas = client.get("/api/openapi.json").json["components"]["schemas"]
    text = schemas["TtsRequest"]["properties"]["text"]
    assert text["minLength"] == 1 and text["pattern"]
    assert schemas["TrainVoiceRequest"]["properties"]["audioDataUri"]["pattern"].endswith("[Aa]:")
    for name in ("TtsRequest", "TrainVoiceRequest"):
        enum = schemas[name]["properties"]["language"]["enum"]
        assert {"en", "zh-cn", "hi", "zh"} <= set(enum) and "xx" not in enum


def test_a_failed_download_is_one_line_with_the_reason(runner, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    from TTS.utils.manage import ModelManager

    def offline(*_args: object, **_kwargs: object) -> None:
        raise ConnectionError("[Errno 111] Connection refused\nwhile fetching config.json")

    monkeypatch.setattr(ModelManager, "download_model", offline)
    result = runner.invoke(args=["model", "download", "--agree-license"])
    assert result.exit_code == 1
    assert "Could not download" in result.output and "[Errno 111] Connection refused" in result.output
    failures = [record for record in caplog.records if "failed" in record.getMessage()]
    assert failures and all(record.exc_info is None for record in failures)  # no traceback in the log
