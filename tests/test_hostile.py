"""The hostile-inputs battery (scripts/hostile.py) in-process and behind gunicorn.

Every case must answer a 4xx JSON with a `detail` (or, where the case allows it, correct speech),
never a 5xx, within bounded time and memory, and must leave no voice row and no file behind.
"""

from __future__ import annotations

import base64
import io
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient

from scripts import hostile
from tests.support.registry import files_under
from tests.support.reporting import show
from tests.support.server import start_server, stop_server, worker_pid
from voiceforge.services.engine import Engine

BATTERY = {case.name: case for case in hostile.cases()}
MAX_SECONDS = 30.0  # per case; the slowest (two sentences of speech on the tiny model) takes ~2 s
# How far a case may lift the process's peak resident memory above where it stood. Measured: at
# most ~30 MB (the 28 MB data URI); decoding the whole hour of compressed silence would take ~940 MB.
MAX_PEAK_GROWTH_MB = 200
# Behind gunicorn the 28 MB upload is also buffered by the server while it is read (measured: the
# worker's peak rises ~130 MB over the whole battery); still well below an unbounded decode.
MAX_WORKER_PEAK_GROWTH_MB = 400


@pytest.fixture(scope="module", autouse=True)
def _warm_engine(tmp_path_factory: pytest.TempPathFactory, checkpoint_dir: Path,
                 shared_engine: Engine) -> None:
    """Load the shared test model and build its decoder, so the first speaking case pays for neither."""
    from flask_migrate import upgrade

    from voiceforge import create_app

    tmp = tmp_path_factory.mktemp("warm")
    app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp / 'warm.db'}",
                      "DATA_DIR": str(tmp / "voices"), "MODEL_DIR": str(checkpoint_dir)},
                     engine=shared_engine)
    with app.app_context():
        upgrade()
    response = app.test_client().post("/api/tts", json={"text": "Warm up.", "voiceId": "default-female"})
    assert response.status_code == 200, response.json


def cloned_voices(client: FlaskClient) -> list[str]:
    listed = client.get("/api/voices").json["voices"]
    return [voice["id"] for voice in listed if voice["kind"] != "builtin"]


def memory_mb(pid: int | str, field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


def reset_peak(pid: int | str) -> float:
    """Reset the process's peak-memory mark (Linux clear_refs "5"); return its current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return memory_mb(pid, "VmRSS")


@pytest.mark.parametrize("name", list(BATTERY))
def test_hostile_input_is_refused_cleanly(client: FlaskClient, data_dir: Path, name: str) -> None:
    case = BATTERY[name]
    data, headers = case.payload()
    rss_before = reset_peak("self")
    started = time.perf_counter()
    response = client.open(case.path, method=case.method, data=data, headers=headers)
    elapsed = time.perf_counter() - started
    peak_growth = memory_mb("self", "VmHWM") - rss_before

    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    assert hostile.verdict(case, response.status_code, response.get_data()) == [], \
        response.get_data(as_text=True)[:500]
    if 200 <= response.status_code < 300 and case.path == hostile.TTS:
        assert_wav_data_uri(response.json["audioDataUri"])
    assert elapsed < MAX_SECONDS
    assert peak_growth < MAX_PEAK_GROWTH_MB
    assert cloned_voices(client) == []
    assert files_under(data_dir) == []


def assert_wav_data_uri(uri: str) -> None:
    header, _, payload = uri.partition(",")
    assert header == "data:audio/wav;base64"
    with wave.open(io.BytesIO(base64.b64decode(payload, validate=True))) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24000)
        assert wav.getnframes() > 0


def test_the_battery_covers_every_endpoint_and_method() -> None:
    routes = {(case.method, case.path.split("/")[2]) for case in BATTERY.values()}
    assert {("POST", "tts"), ("POST", "train-voice"), ("GET", "voices"), ("PATCH", "voices"),
            ("DELETE", "voices")} <= routes
    assert len(BATTERY) == len(hostile.cases())  # names are unique


# --- behind gunicorn ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, checkpoint_dir: Path) -> Iterator[tuple]:
    tmp = tmp_path_factory.mktemp("hostile-gunicorn")
    running = start_server(tmp, checkpoint_dir)
    yield running, tmp
    stop_server(running)


@pytest.mark.slow
def test_the_battery_behind_gunicorn_has_no_server_errors(server: tuple,
                                                          request: pytest.FixtureRequest) -> None:
    running, tmp = server
    warm = running.post("/api/tts", {"text": "Warm up.", "voiceId": "default-female"})
    assert warm.status_code == 200
    worker = worker_pid(running.process.pid)
    rss_before = reset_peak(worker)
    out = io.StringIO()
    totals = hostile.run_battery(running.url, max_seconds=MAX_SECONDS, out=out)
    peak_growth = memory_mb(worker, "VmHWM") - rss_before
    show(request, "hostile battery behind gunicorn: " + " ".join(out.getvalue().strip().splitlines()[-2:])
         + f"; worker peak memory +{peak_growth:.0f} MB over {rss_before:.0f} MB")

    assert totals.cases == len(BATTERY)
    assert totals.server_errors == 0, out.getvalue()
    assert totals.missing_detail == 0, out.getvalue()
    assert totals.unexpected == 0, out.getvalue()
    assert totals.slow == 0, out.getvalue()
    assert totals.passed
    assert peak_growth < MAX_WORKER_PEAK_GROWTH_MB
    listed = requests.get(running.url + "/api/voices", timeout=10).json()["voices"]
    assert [voice for voice in listed if voice["kind"] != "builtin"] == []
    assert files_under(tmp / "voices") == []


# --- regressions the battery found -------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain;charset=UTF-8", None])
def test_json_sent_as_text_plain_or_untyped_is_read(client: FlaskClient, content_type: str | None) -> None:
    # fetch() with a string body and no Content-Type sends text/plain; the body used to be dropped
    # (every field "missing", 400) because webargs re-checked the mimetype after ours.
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/api/tts", data=b'{"text": "Hello.", "voiceId": "default-female"}',
                           headers=headers)
    assert response.status_code == 200, response.json
    assert_wav_data_uri(response.json["audioDataUri"])


@pytest.mark.parametrize(("body", "detail"), [
    (b"[" * 100_000, "nested too deeply"),  # was a RecursionError: 500
    (b'{"text": "Hi", "voiceId": "default-female", "speed": ' + b"1" * 5000 + b"}",
     "number in it is too long"),  # was Python's int-digits ValueError: 500
])
def test_pathological_json_is_400(client: FlaskClient, body: bytes, detail: str) -> None:
    response = client.post("/api/tts", data=body, content_type="application/json")
    assert response.status_code == 400
    assert detail in response.json["detail"]


def test_an_upload_just_over_the_limit_states_exact_sizes() -> None:
    from voiceforge.audio.datauri import parse_data_uri
    from voiceforge.errors import PayloadTooLarge

    # 1,000,005 and 1,000,000 bytes both round to "1.0 MB": the detail used to say 1.0 > 1.0.
    with pytest.raises(PayloadTooLarge) as caught:
        parse_data_uri("data:audio/wav;base64," + "A" * 1_333_340, max_bytes=1_000_000)
    assert caught.value.detail == "The audio is 1,000,005 bytes; the limit is 1,000,000 bytes."
