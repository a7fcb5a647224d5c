"""The OpenAI-compatible /v1 API behind a real gunicorn, driven by the real `openai` client."""

from __future__ import annotations

import base64
import json
import time
import typing
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests
from openai.types.audio.speech_model import SpeechModel

from tests.support.audio import decode_output
from tests.support.reporting import show
from tests.support.server import Server, start_server, stop_server
from voiceforge.config import ConfigError
from voiceforge.runtime import get_runtime

pytestmark = pytest.mark.slow  # a real gunicorn for the module

KEY = "sk-voiceforge-test-key"
RATE = 24000
MIME = {"wav": "audio/wav", "mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac",
        "flac": "audio/flac", "pcm": "audio/pcm"}
# Long enough that no two are merged into one chunk (English chunks are merged up to 250 characters).
SENTENCE = ("This sentence is long enough that two of them will never be merged into one chunk of text, "
            "since together they pass that limit. ")
NEXT_ORIGIN = "http://localhost:9002"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, checkpoint_dir: Path) -> Iterator[Server]:
    # Keys on: every call below proves `Authorization: Bearer` works; one OpenAI name is remapped
    # to a checkpoint speaker, the others keep their defaults.
    running = start_server(tmp_path_factory.mktemp("openai"), checkpoint_dir, VOICEFORGE_API_KEYS=KEY,
                           VOICEFORGE_OPENAI_VOICES="shimmer=default-claribel-dervla")
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def spoken_voices(server: Server) -> list[str]:
    """The voice id of every request the server has spoken so far, from its log (in order)."""
    return [line.rsplit(", voice ", 1)[1].split(",")[0]
            for line in server.log.read_text().splitlines() if "speaking " in line and ", voice " in line]


@pytest.mark.parametrize("fmt", list(MIME))
def test_every_response_format_decodes_at_its_rate(client: openai.OpenAI, fmt: str) -> None:
    audio = client.audio.speech.create(model="tts-1", input="Hello.", voice="alloy", response_format=fmt)
    assert audio.response.headers["Content-Type"].startswith(MIME[fmt])
    rate, samples = decode_output(audio.content, fmt)
    assert rate == (48000 if fmt == "opus" else RATE)  # Opus always decodes at 48 kHz
    assert 0.5 < samples.size / rate < 1.5  # the tiny model speaks 21 tokens: about 0.97 s


def test_the_stream_sends_its_first_bytes_long_before_its_last(client: openai.OpenAI,
                                                               request: pytest.FixtureRequest) -> None:
    started = time.perf_counter()
    arrivals: list[float] = []
    received = b""
    with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", input=SENTENCE * 4, voice="nova") as response:
        assert response.headers["Content-Type"] == "audio/mpeg"  # no response_format: mp3, as OpenAI's
        for chunk in response.iter_bytes():
            arrivals.append(time.perf_counter() - started)
            received += chunk
    first, last = arrivals[0], arrivals[-1]
    show(request, f"/v1/audio/speech, 4 sentences as mp3: {len(arrivals)} chunks, first after "
                  f"{first:.2f} s, last after {last:.2f} s")
    assert first < last / 2, (first, last)
    rate, samples = decode_output(received, "mp3")
    assert samples.size / rate > 3.5  # four sentences of about 1 s each, with pauses between


def test_sse_events_carry_the_audio_in_base64_then_the_usage(client: openai.OpenAI) -> None:
    events = []
    with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", input=SENTENCE * 2, voice="coral", response_format="wav",
            stream_format="sse", instructions="Speak cheerfully.") as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    *deltas, done = events
    assert len(deltas) >= 2 and {event["type"] for event in deltas} == {"speech.audio.delta"}
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] == 0
    assert usage["total_tokens"] == usage["input_tokens"]
    rate, samples = decode_output(b"".join(base64.b64decode(event["audio"]) for event in deltas), "wav")
    assert rate == RATE and samples.size / rate > 1.8  # two sentences


def test_a_voice_by_openai_name_by_our_id_and_as_an_object(client: openai.OpenAI, server: Server) -> None:
    before = len(spoken_voices(server))
    for voice in ("echo", "shimmer", "default-damien-black", {"id": "default-female"}):
        audio = client.audio.speech.create(model="xtts-v2", input="Hi.", voice=voice, response_format="pcm")
        assert len(audio.content) > RATE  # over half a second of 16-bit samples
    # prepare() logs the voice it speaks with before the response starts, so the lines are there.
    assert spoken_voices(server)[before:] == ["default-male", "default-claribel-dervla",
                                              "default-damien-black", "default-female"]


def test_speed_is_clamped_to_what_xtts_speaks(client: openai.OpenAI) -> None:
    def seconds(speed: float) -> float:
        audio = client.audio.speech.create(model="tts-1-hd", input="Hi.", voice="sage", speed=speed,
                                           response_format="pcm")
        return len(audio.content) / 2 / RATE

    fastest, fast, slowest = seconds(4.0), seconds(2.0), seconds(0.25)
    assert fastest == fast  # 4.0 speaks as 2.0
    assert slowest > 3 * fast  # 0.25 speaks as 0.5: four times as long as 2.0


@pytest.mark.parametrize(("change", "param"), [
    ({"model": "whisper-1"}, "model"),
    ({"speed": 4.5}, "speed"),
    ({"speed": 0.2}, "speed"),
    ({"speed": 10 ** 400}, "speed"),  # too big for a float
    ({"input": "a" * 4097}, "input"),
    ({"input": ""}, "input"),
    ({"response_format": "ogg"}, "response_format"),
    ({"stream_format": "chunks"}, "stream_format"),
    ({"voice": {"name": "alloy"}}, "voice"),
])
def test_bad_parameters_are_400_naming_the_parameter(client: openai.OpenAI, change: dict, param: str) -> None:
    body = {"model": "tts-1", "input": "Hello.", "voice": "alloy", **change}
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(**body)
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == param
    assert caught.value.body["type"] == "invalid_request_error"
    assert caught.value.body["message"]


def test_a_null_response_format_is_named_in_json_terms(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(model="tts-1", input="Hello.", voice="alloy", response_format=None)
    message = caught.value.body["message"]
    assert message.startswith("'response_format' must be a string; use one of ") and "None" not in message


def test_unknown_voice_is_404_and_a_wrong_key_401_in_openai_shape(client: openai.OpenAI,
                                                                   server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.audio.speech.create(model="tts-1", input="Hello.", voice="nobody-00000000")
    assert caught.value.body["param"] == "voice" and caught.value.body["code"] == "not_found"
    intruder = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as denied:
        intruder.audio.speech.create(model="tts-1", input="Hello.", voice="alloy")
    assert denied.value.body["code"] == "invalid_api_key"
    assert denied.value.response.headers["WWW-Authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        intruder.models.list()


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert {"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "xtts-v2", "voiceforge"} <= set(ids)
    model = client.models.retrieve("xtts-v2")
    assert (model.id, model.object, model.owned_by) == ("xtts-v2", "model", "voiceforge")
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("dall-e-3")
    assert caught.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("model", [*typing.get_args(SpeechModel),
                                   "gpt-4o-mini-tts-2025-03-20"])  # a snapshot the client's docs name
def test_every_speech_model_openais_client_names_speaks(client: openai.OpenAI, model: str) -> None:
    spoken = client.audio.speech.create(model=model, voice="alloy", input="Hello.", response_format="pcm")
    assert len(spoken.content) > 1000


def test_a_model_that_is_not_a_string_is_named_in_json_terms(server: Server) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    refused = requests.post(f"{server.url}/v1/audio/speech", headers=auth, timeout=30,
                            json={"model": True, "voice": "alloy", "input": "Hello."})
    assert refused.status_code == 400
    assert refused.json()["error"]["message"].startswith("'model' must be a string;")


def test_voice_list_shows_the_openai_names_and_our_voices(server: Server) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    voices = requests.get(f"{server.url}/v1/audio/voices", headers=auth, timeout=30).json()["voices"]
    ids = [voice["id"] for voice in voices]
    assert ids[:13] == ["alloy", "coral", "marin", "nova", "sage", "shimmer", "ash", "ballad", "cedar",
                        "echo", "fable", "onyx", "verse"]
    names = {voice["id"]: voice["name"] for voice in voices}
    assert "default-claribel-dervla" in names["shimmer"] and "default-female" in names["alloy"]
    assert {"default-female", "default-male", "default-ana-florence"} <= set(ids)


def test_unknown_paths_and_methods_answer_in_openai_shape(server: Server) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    missing = requests.get(f"{server.url}/v1/embeddings", headers=auth, timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    wrong = requests.get(f"{server.url}/v1/audio/speech", headers=auth, timeout=30)
    assert wrong.status_code == 405 and "POST" in wrong.headers["Allow"]
    assert set(wrong.json()["error"]) == {"message", "type", "param", "code"}
    keyless = requests.get(f"{server.url}/v1/embeddings", timeout=30)  # no key: never reveals paths
    assert keyless.status_code == 401 and keyless.json()["error"]["code"] == "invalid_api_key"
    not_json = requests.post(f"{server.url}/v1/audio/speech", headers=auth, data=b"{", timeout=30)
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
    # The /api family keeps its own shape and its document stays free of /v1.
    assert "detail" in requests.get(f"{server.url}/api/nope", headers=auth, timeout=30).json()
    paths = requests.get(f"{server.url}/api/openapi.json", timeout=30).json()["paths"]
    assert not any(path.startswith("/v1") for path in paths)


def test_a_full_queue_is_503_with_retry_after_in_openai_shape(make_app) -> None:
    app = make_app(INFERENCE_QUEUE_SIZE=1)
    body = {"model": "tts-1", "input": "Hello.", "voice": "alloy"}
    with get_runtime(app).engine.reserve():  # the one place is taken
        busy = app.test_client().post("/v1/audio/speech", json=body)
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "2"
    assert busy.json["error"]["type"] == "server_error" and busy.json["error"]["code"] == "busy"


def test_cors_for_v1_follows_the_configured_origins(make_app) -> None:
    client = make_app(API_KEYS=[KEY]).test_client()
    preflight = client.options("/v1/audio/speech", headers={
        "Origin": NEXT_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == NEXT_ORIGIN
    denied = client.get("/v1/models", headers={"Origin": "https://elsewhere.example"})
    assert denied.status_code == 401 and "Access-Control-Allow-Origin" not in denied.headers


def test_openai_voices_setting_is_checked_and_merged(make_app, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEFORGE_OPENAI_VOICES", "alloy=default-male, narrator=default-ana-florence")
    voices = get_runtime(make_app()).settings.openai_voices
    assert voices["alloy"] == "default-male" and voices["narrator"] == "default-ana-florence"
    assert voices["nova"] == "default-female" and voices["onyx"] == "default-male"  # defaults kept
    for bad in ({"alloy": "Ana Florence"}, {"default-x": "default-female"}, {"echo": ""}):
        with pytest.raises(ConfigError, match="VOICEFORGE_OPENAI_VOICES"):
            make_app(OPENAI_VOICES=bad)
