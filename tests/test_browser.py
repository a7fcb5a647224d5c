"""Audio as the web app plays it, in headless Chromium: every data-URI format and the streamed WAV."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.browser import chromium
from tests.support.server import Server, start_server, stop_server

pytestmark = pytest.mark.slow  # a real gunicorn and a real browser

# What the web app does: POST JSON with fetch(), then play the answer. The script returns what
# the browser made of the audio: an <audio> element's duration and Web Audio's decoded length.
PLAY_DATA_URI = """
const [body, done] = arguments;
(async () => {
  const answer = await fetch('/api/tts', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                          body: JSON.stringify(body)});
  const uri = (await answer.json()).audioDataUri;
  const audio = new Audio(uri);
  await new Promise((resolve, reject) => { audio.onloadedmetadata = resolve; audio.onerror = reject; });
  await audio.play();
  const bytes = await (await fetch(uri)).arrayBuffer();
  const decoded = await new OfflineAudioContext(1, 1, 24000).decodeAudioData(bytes);
  done({mime: uri.slice(5, uri.indexOf(';')), element: audio.duration, decoded: decoded.duration});
})().catch(error => done({error: String(error)}));
"""

PLAY_STREAM = """
const [body, done] = arguments;
(async () => {
  const answer = await fetch('/api/tts/stream', {
    method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
  const reader = answer.body.getReader();
  const parts = [];
  let firstAt = null;
  const started = performance.now();
  for (;;) {
    const {value, done: finished} = await reader.read();
    if (finished) break;
    if (firstAt === null) firstAt = performance.now() - started;
    parts.push(value);
  }
  const blob = new Blob(parts, {type: answer.headers.get('Content-Type')});
  const decoded = await new OfflineAudioContext(1, 1, 24000).decodeAudioData(await blob.arrayBuffer());
  const audio = new Audio(URL.createObjectURL(blob));
  await new Promise((resolve, reject) => { audio.oncanplay = resolve; audio.onerror = reject; });
  await audio.play();
  done({type: blob.type, chunks: parts.length, decoded: decoded.duration, firstAt,
        total: performance.now() - started});
})().catch(error => done({error: String(error)}));
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, checkpoint_dir: Path) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("browser"), checkpoint_dir)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[object]:
    with chromium() as driver:
        driver.get(server.url + "/healthz")  # same origin as the API, as the web app's proxy would be
        yield driver


# pcm is raw samples: no browser can play it without being told the layout, so it is not here.
@pytest.mark.parametrize(("fmt", "mime"), [("wav", "audio/wav"), ("mp3", "audio/mpeg"), ("opus", "audio/ogg"),
                                           ("aac", "audio/aac"), ("flac", "audio/flac")])
def test_every_data_uri_format_plays_in_chromium(browser, fmt: str, mime: str) -> None:
    body = {"text": "Hello from the browser.", "voiceId": "default-female", "variability": 0, "format": fmt}
    result = browser.execute_async_script(PLAY_DATA_URI, body)
    assert "error" not in result, result
    assert result["mime"] == mime
    # The tiny model speaks 21 tokens: 0.97 s (aac adds its 0.07 s of priming).
    assert 0.9 <= result["decoded"] <= 1.1, result
    assert 0.9 <= result["element"] <= 1.1, result


def test_the_streamed_wav_plays_in_chromium(browser) -> None:
    # 127 characters: each is its own chunk (sentences are merged into chunks of up to 250 characters).
    sentence = ("This sentence is long enough that two of them can never be merged into one chunk of speech, "
                "since together they pass the limit. ")
    body = {"text": sentence * 3, "voiceId": "default-male", "variability": 0, "format": "wav"}
    result = browser.execute_async_script(PLAY_STREAM, body)
    assert "error" not in result, result
    assert result["type"] == "audio/wav"
    # Three chunks of 0.97 s and two pauses of 0.18 s; the header says "unknown length".
    assert 3.1 <= result["decoded"] <= 3.4, result
    assert result["chunks"] > 1 and result["firstAt"] < result["total"], result


# The web app as it really runs: its page on its own origin (Next.js on :9002 in development), calling
# this service on another, so every JSON POST is preflighted. The script reports what the page could
# read: the status, the audio, and the headers the service exposes.
CROSS_ORIGIN_CALLS = """
const [api, key, done] = arguments;
(async () => {
  const post = (path, body) => fetch(api + path, {method: 'POST', body: JSON.stringify(body),
    headers: {'Content-Type': 'application/json', 'X-API-Key': key}});
  const body = {text: 'Hello from the web app.', voiceId: 'default-female', variability: 0};
  const whole = await post('/api/tts', body);
  const uri = (await whole.json()).audioDataUri;
  const streamed = await post('/api/tts/stream', body);
  const bytes = (await streamed.arrayBuffer()).byteLength;
  const refused = await post('/api/tts', {...body, speed: 9});
  done({status: whole.status, wav: uri.startsWith('data:audio/wav;base64,'), streamed: streamed.status,
        bytes, requestId: whole.headers.get('X-Request-ID'), refused: refused.status,
        detail: (await refused.json()).detail});
})().catch(error => done({error: String(error)}));
"""


@contextmanager
def static_page(directory: Path) -> Iterator[str]:
    """An HTTP server for `directory` on localhost, standing in for the web app's own server."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as pages:
        thread = threading.Thread(target=pages.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://localhost:{pages.server_address[1]}"
        finally:
            pages.shutdown()


def test_the_web_apps_origin_calls_the_api_across_origins_in_chromium(
        tmp_path_factory: pytest.TempPathFactory, checkpoint_dir: Path) -> None:
    site = tmp_path_factory.mktemp("web-app")
    (site / "index.html").write_text("<!doctype html><title>VoiceForge Studio</title>")
    with static_page(site) as web_app, static_page(site) as elsewhere:
        # The origin as an operator may well write it, with a trailing slash.
        api = start_server(tmp_path_factory.mktemp("cors"), checkpoint_dir, VOICEFORGE_API_KEYS="web-key",
                           VOICEFORGE_CORS_ORIGINS=web_app + "/")
        try:
            with chromium() as driver:
                driver.get(web_app + "/index.html")
                result = driver.execute_async_script(CROSS_ORIGIN_CALLS, api.url, "web-key")
                assert "error" not in result, result
                assert result["status"] == 200 and result["wav"] and result["streamed"] == 200, result
                assert result["bytes"] > 44 and len(result["requestId"]) == 32, result
                assert result["refused"] == 422 and "speed" in result["detail"], result
                # A page on any other origin is refused by the browser: its script reads nothing.
                driver.get(elsewhere + "/index.html")
                result = driver.execute_async_script(CROSS_ORIGIN_CALLS, api.url, "web-key")
                assert result == {"error": "TypeError: Failed to fetch"}, result
        finally:
            stop_server(api)
