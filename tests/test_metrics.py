"""GET /metrics: what an operator's Prometheus sees, in-process and summed over gunicorn's processes."""

from __future__ import annotations

import base64
import io
import os
import time
import wave
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.audio import data_uri, encode_audio, voice
from tests.support.registry import add_stored_voice
from tests.support.server import start_server, stop_server
from voiceforge.jobs import store
from voiceforge.jobs.runner import JobRunner
from voiceforge.runtime import get_runtime
from voiceforge.services import synthesis

VOICE_ROUTE = "/api/voices/<string:voice_id>"


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when there are none)."""
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def delta(before: str, after: str, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def scrape(client, **headers: str) -> str:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.data
    assert response.headers["Content-Type"].startswith("text/plain")
    return response.get_data(as_text=True)


def wav_seconds(audio_data_uri: str) -> float:
    with wave.open(io.BytesIO(base64.b64decode(audio_data_uri.split(",", 1)[1]))) as wav:
        return wav.getnframes() / wav.getframerate()


def test_requests_are_counted_by_route_rule_never_by_raw_path(client) -> None:
    before = scrape(client)
    for voice_id in ("missing-0000abcd", "missing-1111abcd"):
        assert client.get(f"/api/voices/{voice_id}").status_code == 404
    assert client.get("/nowhere").status_code == 404
    after = scrape(client)
    counted = {"name": "voiceforge_http_requests_total", "method": "GET", "status": "404"}
    assert delta(before, after, **counted, route=VOICE_ROUTE) == 2
    assert delta(before, after, **counted, route="<unmatched>") == 1
    assert delta(before, after, "voiceforge_http_request_duration_seconds_count", route=VOICE_ROUTE) == 2
    assert "missing-0000abcd" not in after and "/nowhere" not in after


def test_speech_records_synthesis_time_and_the_audio_it_produced(client) -> None:
    before = scrape(client)
    spoken = client.post("/api/tts", json={"text": "Metrics count this sentence.", "voiceId": "default-male",
                                           "variability": 0})
    assert spoken.status_code == 200
    streamed = client.post("/api/tts/stream", json={"text": "And this one, streamed.", "format": "pcm",
                                                    "voiceId": "default-female", "variability": 0})
    assert streamed.status_code == 200
    streamed_seconds = len(streamed.get_data()) / 2 / 24000  # pcm: 16-bit mono at 24 kHz
    after = scrape(client)

    assert delta(before, after, "voiceforge_synthesis_seconds_count") == 2  # one per request
    assert delta(before, after, "voiceforge_synthesis_seconds_sum") > 0
    assert delta(before, after, "voiceforge_synthesis_tokens_total") > 0
    assert delta(before, after, "voiceforge_synthesis_tokens_per_second_count") == 2
    produced = delta(before, after, "voiceforge_synthesis_audio_seconds_total")
    assert produced == pytest.approx(wav_seconds(spoken.json["audioDataUri"]) + streamed_seconds, abs=0.01)
    assert value(after, "voiceforge_model_loaded") >= 1
    assert value(after, "voiceforge_inference_queue_depth") == 0  # every place given back
    # A several-sentence request is still one observation: the help text says what a sample is.
    helps = {family.name: family.documentation for family in text_string_to_metric_families(after)}
    for name in ("voiceforge_synthesis_seconds", "voiceforge_synthesis_tokens_per_second"):
        assert "per speech request" in helps[name] and "sentence." not in helps[name]


def test_a_slow_listener_does_not_count_as_synthesis_time(client) -> None:
    app = client.application
    before = scrape(client)
    with app.app_context():
        speech = synthesis.prepare(get_runtime(app), "First part. Second part.", "default-male",
                                   variability=0)
    started, held = time.perf_counter(), 0.0
    for _piece in speech.stream():
        time.sleep(0.2)  # the client reads slowly
        held += 0.2
    wall = time.perf_counter() - started
    engine_time = delta(before, scrape(client), "voiceforge_synthesis_seconds_sum")
    assert held >= 0.4 and 0 < engine_time <= wall - held + 0.05


def test_queue_depth_and_busy_refusals(make_app) -> None:
    app = make_app(INFERENCE_QUEUE_SIZE=1)  # an engine of its own: its load is timed here too
    client = app.test_client()
    before = scrape(client)
    with app.app_context():
        speech = synthesis.prepare(get_runtime(app), "Holding the only place.", "default-female")
    try:
        during = scrape(client)
        refused = client.post("/api/tts", json={"text": "No room.", "voiceId": "default-female"})
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        after_refusal = scrape(client)
    finally:
        speech.close()
    after = scrape(client)
    assert delta(before, during, "voiceforge_inference_queue_depth") == 1
    assert delta(before, after_refusal, "voiceforge_inference_refused_total") == 1
    assert delta(before, after, "voiceforge_inference_queue_depth") == 0
    assert delta(before, after, "voiceforge_http_requests_total", route="/api/tts", status="503") == 1
    assert delta(before, after, "voiceforge_model_load_seconds_count") == 1


def test_latents_are_read_once_then_served_from_the_cache(client) -> None:
    data, mime = encode_audio(voice(4.0, rate=48000), 48000, "webm/opus")
    enrolled = client.post("/api/train-voice", json={"modelName": "Cached",
                                                     "audioDataUri": data_uri(data, mime)})
    assert enrolled.status_code == 200, enrolled.json
    voice_id = enrolled.json["modelId"]
    before = scrape(client)
    for _ in range(3):
        assert client.post("/api/tts", json={"text": "Hi.", "voiceId": voice_id}).status_code == 200
    after = scrape(client)
    lookups = {"name": "voiceforge_cache_lookups_total", "cache": "latents"}
    assert value(after, **lookups, result="miss") - value(before, **lookups, result="miss") == 1
    assert value(after, **lookups, result="hit") - value(before, **lookups, result="hit") == 2


def test_jobs_by_state_come_from_the_table_and_runs_are_timed(app, client) -> None:
    with app.app_context():
        voice = add_stored_voice(Path(app.config["DATA_DIR"]), "Job Voice")
        store.new_job(voice.id, {}, epochs=1)
    queued = scrape(client)
    assert value(queued, "voiceforge_jobs", state="queued") == 1
    assert value(queued, "voiceforge_jobs", state="succeeded") == 0

    runner = JobRunner(app, owner="metrics-test",
                       work={"finetune": lambda runtime, job, beat: beat(force=True)})
    with app.app_context():
        job = store.claim_next(runner.owner, runner.lease_seconds)
    assert runner.execute(job.id).value == "succeeded"
    done = scrape(client)
    assert value(done, "voiceforge_jobs", state="queued") == 0
    assert value(done, "voiceforge_jobs", state="succeeded") == 1
    assert delta(queued, done, "voiceforge_job_duration_seconds_count", outcome="succeeded") == 1


def test_metrics_need_a_key_when_keys_are_set(make_app) -> None:
    client = make_app(API_KEYS=["metrics-key"]).test_client()
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused.json["detail"]
    assert "voiceforge_http_requests_total" in scrape(client, Authorization="Bearer metrics-key")
    assert client.get("/metrics", headers={"X-API-Key": "metrics-key"}).status_code == 200


@pytest.mark.slow
def test_behind_gunicorn_every_worker_and_the_job_runner_count(tmp_path: Path, checkpoint_dir: Path) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    (directory / "counter_1.db").write_bytes(b"stale")  # an earlier run's values must not count
    server = start_server(tmp_path, checkpoint_dir, VOICEFORGE_WORKERS="2",
                          PROMETHEUS_MULTIPROC_DIR=str(directory))
    try:
        for _ in range(20):  # a new connection each: gunicorn hands them to either worker
            assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
        # The two workers and the job runner, waited for: CI once counted two here right after the probes
        # (a child being replaced, most likely; its log was not kept, so a failure now shows the log).
        deadline = time.monotonic() + 30
        while len(children := _children(server.process.pid)) != 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(children) == 3, server.log.read_text()[-3000:]
        # The job runner (`flask jobs worker`, started by the master) writes its values there too: it
        # inherited the directory. A worker writes once it has counted something.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            writers = {int(path.stem.rsplit("_", 1)[1]) for path in directory.glob("*.db")}
            if len(writers & set(children)) >= 2:
                break
            time.sleep(0.2)
        assert len(writers & set(children)) >= 2, (children, writers)
        # Whichever worker answers, the totals are every process's: 20 probes plus start_server's one.
        for _ in range(4):
            text = requests.get(server.url + "/metrics", timeout=10).text
            assert value(text, "voiceforge_http_requests_total", route="/healthz", status="200") == 21
        assert value(text, "voiceforge_jobs", state="queued") == 0
    finally:
        stop_server(server)
    assert not (directory / "counter_1.db").exists()


def test_a_command_makes_a_metrics_directory_that_is_named_but_missing(tmp_path: Path) -> None:
    """A `flask` command sharing gunicorn's environment file, before gunicorn has made the directory."""
    import subprocess
    import sys

    directory = tmp_path / "prometheus" / "not-made-yet"
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory),
                   "VOICEFORGE_INSTANCE_PATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "voiceforge", "db", "upgrade"],
                          env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert directory.is_dir()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_a_process_that_exits_leaves_no_live_gauge_behind(tmp_path: Path) -> None:
    # A `flask` command run beside the service with the same PROMETHEUS_MULTIPROC_DIR (model warmup).
    import subprocess
    import sys

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    script = ("from voiceforge import metrics\nmetrics.MODEL_LOADED.set(1)\n"
              "metrics.REQUESTS.labels('GET', '/x', '200').inc()\n")
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], env=environment, cwd=Path(__file__).parents[1], check=True,
                   timeout=120)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    exposition = generate_latest(registry).decode()
    assert "voiceforge_model_loaded 1.0" not in exposition  # its model is gone with it
    counted = 'voiceforge_http_requests_total{method="GET",route="/x",status="200"} 1.0'
    assert counted in exposition  # what it counted still counts
