"""End to end behind a real gunicorn on loopback: the deployment path, and concurrency."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support.audio import VOICE_RATE, data_uri, decode_output, encode_audio, voice
from tests.support.server import (
    Server,
    control_socket_config,
    control_socket_workers,
    free_port,
    parent_pid,
    raw_request,
    start_server,
    stop_server,
    voluntary_context_switches,
    worker_pid,
)

pytestmark = pytest.mark.slow  # a real gunicorn per module

BODY_LIMIT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host's runtime directory ($XDG_RUNTIME_DIR), where gunicorn puts its control socket."""
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, checkpoint_dir: Path, run_dir: Path) -> Iterator[Server]:
    # Started the way many operators do, with `-b` on gunicorn's command line: it overrides the bind
    # that gunicorn.conf.py read from VOICEFORGE_BIND (left at another address here).
    port = free_port()
    running = start_server(tmp_path_factory.mktemp("e2e"), checkpoint_dir, port, ("-b", f"127.0.0.1:{port}"),
                           VOICEFORGE_MAX_BODY_BYTES=str(BODY_LIMIT), VOICEFORGE_BIND="127.0.0.1:9",
                           XDG_RUNTIME_DIR=str(run_dir))
    yield running
    stop_server(running)


def test_the_control_socket_is_named_by_the_address_gunicorn_listens_on(server: Server,
                                                                        run_dir: Path) -> None:
    """A second instance started with another `-b` must not take this one's `gunicornc` socket over."""
    port = server.url.rsplit(":", 1)[1]
    # gunicorn's master binds the socket in a thread of its own once the workers are forked, so a
    # worker can answer HTTP first (seen on a loaded CI machine): give it a few seconds.
    deadline = time.monotonic() + 15
    while not any(run_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [path.name for path in run_dir.iterdir()] == [f"voiceforge-127.0.0.1-{port}.ctl"]
    workers = control_socket_workers(run_dir / f"voiceforge-127.0.0.1-{port}.ctl")
    assert workers and {parent_pid(pid) for pid in workers} == {server.process.pid}


def test_health_readiness_and_cors_behind_gunicorn(server: Server) -> None:
    assert requests.get(server.url + "/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(server.url + "/readyz", timeout=5).json()
    assert ready["status"] == "ready" and ready["database"] == "ok"
    allowed = requests.get(server.url + "/api/voices", headers={"Origin": "http://localhost:9002"}, timeout=5)
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://localhost:9002"
    denied = requests.get(server.url + "/api/voices", headers={"Origin": "https://evil.example"}, timeout=5)
    assert "Access-Control-Allow-Origin" not in denied.headers


def test_malformed_requests_are_4xx_json_behind_gunicorn(server: Server) -> None:
    cases = [
        requests.post(server.url + "/api/tts", data="{oops", timeout=5,
                      headers={"Content-Type": "application/json"}),
        requests.post(server.url + "/api/tts", data="text=hi", timeout=5,
                      headers={"Content-Type": "application/x-www-form-urlencoded"}),
        requests.post(server.url + "/api/train-voice", json={"modelName": "x", "audioDataUri": "data:,"},
                      timeout=5),
        requests.get(server.url + "/api/voices/..%2f..%2fetc%2fpasswd", timeout=5),
    ]
    for response in cases:
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["detail"]


def test_enrol_then_speak_behind_gunicorn(server: Server) -> None:
    data, mime = encode_audio(voice(4.0, rate=48000), 48000, "webm/opus")
    enrolled = server.post("/api/train-voice", {"modelName": "Browser Voice",
                                                "audioDataUri": data_uri(data, mime)})
    assert enrolled.status_code == 200, enrolled.text
    voice_id = enrolled.json()["modelId"]
    spoken = server.post("/api/tts", {"text": "Hello from gunicorn.", "voiceId": voice_id})
    assert spoken.status_code == 200
    assert spoken.json()["audioDataUri"].startswith("data:audio/wav;base64,")
    # What the deployed worker reports once it has spoken: timestamps in UTC with their offset, and
    # how its decoder runs (one worker here, so /readyz answers from the worker that spoke).
    stored = requests.get(f"{server.url}/api/voices/{voice_id}", timeout=5).json()
    assert stored["createdAt"].endswith("+00:00") and stored["updatedAt"].endswith("+00:00")
    decoding = requests.get(server.url + "/readyz", timeout=5).json()["model"]["decoding"]
    assert decoding == {**decoding, "gptDtype": "float32", "vocoderDtype": "float32", "cudaGraphs": False}
    assert decoding["rows"] >= 1


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="torch runs one CPU thread: no OpenMP workers")
def test_decoding_keeps_the_cpu_threads_awake_between_parallel_operators(server: Server) -> None:
    """A model loaded, a decoder built and a voice enrolled by request threads (which live on) must
    leave the decoder's OpenMP workers spinning between a step's parallel operators, not sleeping in
    the kernel and woken for each of them: that cost a full-size step a quarter of its time on a
    2-core CPU (decoding/threads.py). Here, on the tiny model, about 70 sleeps a request against
    over 1,000 when a request thread kept a team of OpenMP workers."""
    data, mime = encode_audio(voice(4.0), VOICE_RATE, "wav")
    enrolled = server.post("/api/train-voice", {"modelName": "Awake", "audioDataUri": data_uri(data, mime)})
    assert enrolled.status_code == 200, enrolled.text
    body = {"text": "Keep the workers awake.", "voiceId": enrolled.json()["modelId"], "variability": 0}
    assert server.post("/api/tts", body).status_code == 200  # the model and decoder exist after this
    worker = worker_pid(server.process.pid)
    sleeps = []
    for _ in range(3):
        before = voluntary_context_switches(worker)
        assert server.post("/api/tts", body).status_code == 200
        sleeps.append(voluntary_context_switches(worker) - before)
    assert sorted(sleeps)[1] < 300, sleeps


def test_concurrent_requests_give_the_same_audio_as_sequential_ones(server: Server) -> None:
    requests_ = [{"text": f"Sentence number {i} for the concurrency check.", "variability": 0,
                  "voiceId": ("default-female", "default-male")[i % 2]} for i in range(8)]
    sequential = [server.post("/api/tts", body).json()["audioDataUri"] for body in requests_]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda body: server.post("/api/tts", body), requests_))
    assert [r.status_code for r in responses] == [200] * 8
    assert_same_audio([r.json()["audioDataUri"] for r in responses], sequential)
    assert len(set(sequential)) == 8


def assert_same_audio(uris: list[str], expected: list[str]) -> None:
    """Each WAV data URI holds the expected one's audio: same length, within 2 steps of 16 bits.

    Requests in flight together are decoded in one batch; their tokens are the same as alone, and
    the batched matrix products round differently by about 1e-7, which can move a sample by one step.
    A request that got another's audio (the mixed-streams bug) differs by far more.
    """
    for got, want in zip(uris, expected, strict=True):
        _, got_samples = decode_output(base64.b64decode(got.split(",", 1)[1]), "wav")
        _, want_samples = decode_output(base64.b64decode(want.split(",", 1)[1]), "wav")
        assert got_samples.size == want_samples.size  # 16-bit samples, as PyAV decodes WAV
        assert np.abs(got_samples.astype(np.int32) - want_samples.astype(np.int32)).max() <= 2


def test_mixed_concurrent_load_has_no_errors_beyond_documented_503s(server: Server) -> None:
    """16 simultaneous speech and enrolment requests: every answer is 200 or a 503 to retry."""
    speech = [{"text": f"Load test sentence {i}.", "voiceId": "default-female", "variability": 0}
              for i in range(12)]
    alone = [server.post("/api/tts", body).json()["audioDataUri"] for body in speech]
    recordings = []
    for i in range(4):
        data, mime = encode_audio(voice(3.5 + i * 0.25, rate=48000, seed=i), 48000, "ogg/opus")
        recordings.append({"modelName": f"Concurrent {i}", "audioDataUri": data_uri(data, mime)})
    jobs = [("/api/tts", body) for body in speech] + [("/api/train-voice", body) for body in recordings]
    statuses: list[int] = []

    def call_until_served(job: tuple[str, dict]) -> requests.Response:
        deadline = time.monotonic() + 120
        while True:
            response = server.post(*job)
            statuses.append(response.status_code)
            if response.status_code != 503 or time.monotonic() > deadline:
                return response
            assert response.headers["Retry-After"]
            time.sleep(0.2)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        responses = list(pool.map(call_until_served, jobs))
    assert set(statuses) <= {200, 503}
    assert [r.status_code for r in responses] == [200] * len(jobs)
    assert_same_audio([r.json()["audioDataUri"] for r in responses[:12]], alone)
    enrolled = [r.json()["modelId"] for r in responses[12:]]
    listed = {v["id"]: v for v in requests.get(server.url + "/api/voices", timeout=10).json()["voices"]}
    assert all(listed[voice_id]["status"] == "ready" for voice_id in enrolled)
    assert "database is locked" not in server.log.read_text()


def test_the_server_log_never_holds_the_text_to_speak(server: Server) -> None:
    canary = "CANARY-e2e-51c0 please do not log me"
    assert server.post("/api/tts", {"text": canary, "voiceId": "default-male"}).status_code == 200
    server.post("/api/tts", {"text": canary, "voiceId": "missing-00000000"})
    time.sleep(0.2)
    log = server.log.read_text()
    assert "route=/api/tts status=200" in log and "route=/api/tts status=404" in log
    assert "CANARY" not in log


def test_body_limit_holds_with_chunked_and_lying_lengths(server: Server) -> None:
    big = b'{"text": "' + b"a" * (BODY_LIMIT + 1000) + b'", "voiceId": "default-female"}'
    declared = server.post("/api/tts", {"text": "a" * (BODY_LIMIT + 1000), "voiceId": "default-female"})
    assert declared.status_code == 413 and declared.json()["detail"]

    status, body = post_chunked(server, "/api/tts", big)
    assert status == 413 and b"detail" in body, body
    # Exactly the limit is allowed chunked as with a Content-Length (then refused for its text, 422);
    # one byte more is not.
    for extra, expected in ((0, 422), (1, 413)):
        exact = b'{"voiceId": "default-female", "text": "' + b"a" * BODY_LIMIT
        exact = exact[:BODY_LIMIT - 2 + extra] + b'"}'
        status, body = post_chunked(server, "/api/tts", exact)
        assert (len(exact) - BODY_LIMIT, status) == (extra, expected), body[:300]

    small = b'{"text": "Hi", "voiceId": "default-female"}'
    status, body = raw_request(server, "POST /api/tts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                               "Content-Type: application/json\r\nContent-Length: 10\r\n\r\n", [small])
    assert status == 400 and b"detail" in body  # only the declared 10 bytes are read: not JSON


def test_an_early_rejection_keeps_the_connection_usable(server: Server) -> None:
    with requests.Session() as session:
        rejected = session.post(server.url + "/api/tts", data=b"\0" * 200_000, timeout=10,
                                headers={"Content-Type": "audio/wav"})
        assert rejected.status_code == 415
        assert session.get(server.url + "/healthz", timeout=10).status_code == 200  # same connection


def test_a_full_inference_queue_leaves_threads_for_health_checks_and_its_503(tmp_path: Path,
                                                                              checkpoint_dir: Path) -> None:
    """Every queue place held by a long stream: /healthz and the queue's own 503 must still find a
    thread, so the default threads outnumber the default queue places (8)."""
    server = start_server(tmp_path, checkpoint_dir)
    # Near the default 5,000-character limit: minutes of speech, far more than the sockets can buffer.
    text = " ".join(f"Sentence number {i} of a long text that keeps its stream busy." for i in range(75))
    with ThreadPoolExecutor(max_workers=8) as pool:  # together: all in flight long before any ends
        streams = list(pool.map(lambda _: _slow_reader(server, "/api/tts/stream",
                                                       {"text": text, "voiceId": "default-male"}), range(8)))
    try:
        assert requests.get(server.url + "/healthz", timeout=30).status_code == 200
        one_more = {"text": "One more.", "voiceId": "default-male"}
        refused = requests.post(server.url + "/api/tts", json=one_more, timeout=30)
        assert refused.status_code == 503 and refused.json()["code"] == "busy"
        assert refused.headers["Retry-After"]
        assert "not more than VOICEFORGE_INFERENCE_QUEUE_SIZE" not in server.log.read_text()
        assert "is not below VOICEFORGE_GRACEFUL_TIMEOUT" not in server.log.read_text()
    finally:
        for stream in streams:
            stream.close()
        stop_server(server)


def test_a_stream_whose_client_stops_reading_gives_its_queue_place_back(tmp_path: Path,
                                                                        checkpoint_dir: Path) -> None:
    """A client that stays connected but reads nothing must not hold the only queue place for ever."""
    server = start_server(tmp_path, checkpoint_dir, VOICEFORGE_INFERENCE_QUEUE_SIZE="1",
                          VOICEFORGE_STREAM_SEND_TIMEOUT="2", VOICEFORGE_MAX_TEXT_CHARS="30000")
    # About 8 MB of slowed-down speech: more than the kernel buffers between the two (4 MB here) hold.
    text = " ".join(f"Sentence number {i} of a long text that keeps its stream busy." for i in range(400))
    stalled = _slow_reader(server, "/api/tts/stream", {"text": text, "voiceId": "default-male", "speed": 0.5})
    one_more = {"text": "One more.", "voiceId": "default-male"}
    try:
        assert server.post("/api/tts", one_more).status_code == 503
        deadline = time.monotonic() + 120  # the write blocks once the socket buffers are full, then 2 s
        while (answer := server.post("/api/tts", one_more)).status_code == 503:
            assert time.monotonic() < deadline, "the stalled stream kept its queue place"
            time.sleep(0.5)
        assert answer.status_code == 200
        assert "client went away" in server.log.read_text()
    finally:
        stalled.close()
        stop_server(server)


def test_threads_sized_from_the_queue_survive_a_reload(tmp_path: Path, checkpoint_dir: Path) -> None:
    control = tmp_path / "control.ctl"
    server = start_server(tmp_path, checkpoint_dir, VOICEFORGE_INFERENCE_QUEUE_SIZE="20",
                          VOICEFORGE_CONTROL_SOCKET=str(control))
    try:
        deadline = time.monotonic() + 15  # the master binds its socket once the workers are forked
        while not control.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "threads: 28" in control_socket_config(control).splitlines()  # 20 places + 8
        worker = control_socket_workers(control)
        os.kill(server.process.pid, signal.SIGHUP)  # gunicorn reads gunicorn.conf.py again
        while control_socket_workers(control) == worker and time.monotonic() < deadline + 30:
            time.sleep(0.2)
        assert "threads: 28" in control_socket_config(control).splitlines()
    finally:
        stop_server(server)


def test_a_reload_rotates_api_keys_and_an_unusable_key_file_keeps_the_last(tmp_path: Path,
                                                                           checkpoint_dir: Path) -> None:
    """Each new worker reads the key file: a SIGHUP puts new keys in force. A file caught empty or half
    written by then must not stop gunicorn (the worker would fail to boot): the last keys stay."""
    keys = tmp_path / "keys.txt"
    keys.write_text("key-one\n")
    server = start_server(tmp_path, checkpoint_dir, VOICEFORGE_API_KEYS_FILE=str(keys))

    def status(key: str) -> int:
        return requests.get(server.url + "/api/voices", headers={"X-API-Key": key}, timeout=30).status_code

    try:
        assert (status("key-one"), status("key-two")) == (200, 401)
        keys.write_text("# being rewritten\n")  # holds no key
        reload_workers(server)
        assert (status("key-one"), status("key-two")) == (200, 401)
        log = server.log.read_text()
        assert "holds none" in log and "serves with the keys gunicorn's master read last" in log
        assert "key-one" not in log
        keys.write_text("key-two\n")
        reload_workers(server)
        assert (status("key-one"), status("key-two")) == (401, 200)
    finally:
        stop_server(server)


def reload_workers(server: Server) -> None:
    """SIGHUP gunicorn and wait until its one worker is a new one (and gunicorn still runs)."""
    old = worker_pid(server.process.pid)
    os.kill(server.process.pid, signal.SIGHUP)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.process.poll() is None, f"gunicorn stopped: {server.log.read_text()}"
        try:
            if worker_pid(server.process.pid) != old:
                return
        except AssertionError:
            pass  # the old worker and the new one, for a moment
        time.sleep(0.2)
    raise AssertionError(f"no new worker after a SIGHUP: {server.log.read_text()}")


def test_a_job_stop_time_that_gunicorn_would_cut_short_is_warned_about(tmp_path: Path,
                                                                       checkpoint_dir: Path) -> None:
    server = start_server(tmp_path, checkpoint_dir, VOICEFORGE_JOB_STOP_SECONDS="40",
                          VOICEFORGE_GRACEFUL_TIMEOUT="30")
    stop_server(server)
    warning = "VOICEFORGE_JOB_STOP_SECONDS=40 is not below VOICEFORGE_GRACEFUL_TIMEOUT=30"
    assert warning in server.log.read_text()


def test_a_caller_without_a_key_is_answered_before_its_body_arrives(tmp_path: Path,
                                                                    checkpoint_dir: Path) -> None:
    server = start_server(tmp_path, checkpoint_dir, VOICEFORGE_API_KEYS="a-key-for-this-test")
    try:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            # A body announced as 1 MiB of which 10 bytes ever come: the 401 must not wait for the rest.
            sock.sendall(b"POST /api/tts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1048576\r\n\r\n0123456789")
            assert sock.recv(12) == b"HTTP/1.1 401"  # a timeout here: the server waited for the body
    finally:
        stop_server(server)


def post_chunked(server: Server, path: str, payload: bytes) -> tuple[int, bytes]:
    """POST a JSON body with chunked transfer encoding (no Content-Length), in 64 KiB chunks."""
    chunks = [b"%x\r\n%s\r\n" % (len(part), part) for part in
              (payload[i:i + 65536] for i in range(0, len(payload), 65536))] + [b"0\r\n\r\n"]
    return raw_request(server, f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                       "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n", chunks)


def _slow_reader(server: Server, path: str, body: dict) -> socket.socket:
    """A streaming request whose client has read its status line and then reads nothing (a tiny receive
    buffer soon makes the server's writes wait): it keeps its thread and its queue place."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: sets the TCP window
    sock.settimeout(30)
    sock.connect((host, int(port)))
    payload = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    assert sock.recv(12) == b"HTTP/1.1 200"  # speaking: its place in the queue is taken
    return sock
