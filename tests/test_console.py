"""The console at `/` and Swagger UI's local assets: served in-process, then used in headless Chromium.

The browser tests run against a real gunicorn: record, clone, speak, fine-tune, keys. The browser's
microphone is Chromium's fake device playing a WAV this module makes; voices are made through the page's
own buttons and files, never through the API behind its back. A failing browser test leaves a
screenshot, the page's HTML and its console log in test-artifacts/.
"""

from __future__ import annotations

import base64
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests

from tests.support.browser import artifacts_on_failure, chromium, fake_microphone
from tests.support.console import ConsolePage, microphone_wav, sample_wavs
from tests.support.finetune import TEXTS, build_training_checkpoint
from tests.support.server import Server, never_answering, start_server, stop_server

slow = pytest.mark.slow  # real gunicorns, a real browser, real training

KEY = "console-test-key"
# Enough speech for a fine-tuning request in tests (the default is 120 s); a rate that moves a tiny model.
FINE_TUNING = {"VOICEFORGE_FINETUNE_MIN_SPEECH_SECONDS": "10", "VOICEFORGE_FINETUNE_LEARNING_RATE": "1e-3"}
# Three sentences of 127 characters: three chunks of speech, so the stream arrives in parts.
LONG_TEXT = ("This sentence is long enough that two of them can never be merged into one chunk of speech, "
             "since together they pass the limit. ") * 3


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, checkpoint_dir: Path) -> Iterator[Server]:
    """A server that requires an API key, on the plain test checkpoint (it cannot fine-tune: no dvae.pth)."""
    server = start_server(tmp_path_factory.mktemp("console"), checkpoint_dir, VOICEFORGE_API_KEYS=KEY,
                          **FINE_TUNING)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def trainable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server without keys whose checkpoint can train; gunicorn's master runs the job runner."""
    checkpoint = build_training_checkpoint(tmp_path_factory.mktemp("console-ft") / "xtts")
    server = start_server(tmp_path_factory.mktemp("console-ft-server"), checkpoint, **FINE_TUNING)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    directory = tmp_path_factory.mktemp("console-audio")
    return {"microphone": microphone_wav(directory / "microphone.wav"), "samples": sample_wavs(directory)}


@pytest.fixture(scope="module")
def driver(files: dict) -> Iterator[object]:
    with chromium(*fake_microphone(files["microphone"]), "--window-size=1280,1600") as session:
        yield session


@pytest.fixture(autouse=True)
def _artifacts(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failed browser test leaves a screenshot, the page and the browser's log in test-artifacts/."""
    if "driver" not in request.fixturenames:
        yield
        return
    with artifacts_on_failure(request.getfixturevalue("driver"), request):
        yield


@pytest.fixture
def page(driver, keyed: Server) -> ConsolePage:
    """The console on the keyed server with the key entered, as a user starts."""
    console = ConsolePage(driver, keyed.url).open()
    console.use_key(KEY)
    console.wait_for_voices()
    console.severe_log_entries()  # what came before the key (401s) is not the test's business
    return console


def api(server: Server, method: str, path: str, **kwargs: object) -> requests.Response:
    return requests.request(method, server.url + path, headers={"X-API-Key": KEY}, timeout=60, **kwargs)


class References(HTMLParser):
    """Every URL a page loads: src of scripts, images and media, href of stylesheets and icons."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in ("script", "img", "audio", "source") and values.get("src"):
            self.urls.append(values["src"])
        if tag == "link" and values.get("href"):
            self.urls.append(values["href"])


def references(html: str) -> list[str]:
    parser = References()
    parser.feed(html)
    return parser.urls


def test_the_console_is_served_without_a_key_from_local_files_only(make_app) -> None:
    client = make_app(API_KEYS=[KEY]).test_client()
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "<title>VoiceForge console</title>" in html
    assert not re.search(r"https?://", html)  # no CDN: the page works on an offline machine
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self';" in policy  # nothing from elsewhere runs
    urls = references(html)
    assert {"console/console.css", "console/console.js"} <= set(urls)
    for url in urls:
        if url.startswith("data:"):
            continue
        asset = client.get(urljoin("/", url))
        assert asset.status_code == 200, url
        assert not re.search(rb"https?://(?!www\.w3\.org)", asset.data), url
    for module in ("api", "enrol", "jobs", "player", "recorder", "ui", "voices"):
        assert client.get(f"/console/{module}.js").mimetype == "text/javascript"
    # The file picker offers video as well: the server takes the sound of a phone's video.
    assert re.search(r'<input id="voice-files" type="file" accept="audio/\*,video/\*"', html)
    assert client.get("/api/voices").status_code == 401  # the API behind it still needs the key
    assert client.get("/console/nope.js").status_code == 404


def test_swagger_ui_loads_its_assets_from_this_server(make_app) -> None:
    client = make_app(API_KEYS=[KEY]).test_client()  # the documents stay open with keys on
    docs = client.get("/api/docs")
    assert docs.status_code == 200
    html = docs.get_data(as_text=True)
    assert not re.search(r"https?://", html)  # it used to load from a CDN
    urls = references(html)
    assert len(urls) == 3 and all(url.startswith("/swagger-ui/") for url in urls), urls
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.data) > 10_000, url
        assert asset.headers["Cache-Control"] == "public, max-age=86400"
    assert client.get("/swagger-ui/../__init__.py").status_code == 404  # only the package's files
    assert client.get("/swagger-ui/%2e%2e/__init__.py").status_code == 404


@slow
def test_swagger_ui_renders_offline_in_chromium(driver, keyed: Server) -> None:
    page = ConsolePage(driver, keyed.url)
    driver.get(keyed.url + "/api/docs")
    title = page.wait(lambda: page.all(".swagger-ui .info .title"), 60, "Swagger UI to render")[0]
    assert title.text.startswith("VoiceForge")
    assert page.all(".opblock-summary-path[data-path='/api/tts']")
    # Nothing failed to load (the browser's own guess at /favicon.ico aside: flask-smorest's page names none).
    assert [entry for entry in page.severe_log_entries() if "/favicon.ico" not in entry] == []


@slow
def test_the_page_needs_no_key_but_its_api_calls_carry_the_one_given(driver, keyed: Server) -> None:
    assert requests.get(keyed.url + "/", timeout=10).status_code == 200  # no key, no secrets in it
    assert requests.get(keyed.url + "/api/voices", timeout=10).status_code == 401
    console = ConsolePage(driver, keyed.url).open()
    console.script("sessionStorage.clear()")
    console.open()
    notice = console.wait(lambda: console.text("notice"), 30, "the notice about the key")
    assert "requires an API key" in notice
    assert "valid API key is required" in console.wait(lambda: console.text("voices-status"), 30)
    assert console.voice_options() == []

    console.use_key(KEY)
    assert "default-female" in console.wait_for_voices()
    assert [entry for entry in console.severe_log_entries() if "401" not in entry] == []  # 401s only
    assert not console.by_id("notice").is_displayed()
    assert console.script("return sessionStorage.getItem('voiceforge.apiKey')") == KEY
    assert console.script("return localStorage.length") == 0  # never kept beyond the tab's session
    urls = console.script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any("/api/voices" in url for url in urls)
    assert not [url for url in urls if KEY in url]  # a header, never part of a URL

    console.open()  # a reload keeps the key for this tab
    assert console.by_id("api-key").get_attribute("value") == KEY
    assert "default-female" in console.wait_for_voices()
    assert console.severe_log_entries() == []


@slow
def test_readiness_names_a_missing_data_directory(driver, tmp_path: Path, checkpoint_dir: Path,
                                                  files: dict) -> None:
    server = start_server(tmp_path, checkpoint_dir)
    try:
        page = ConsolePage(driver, server.url).open()
        page.wait_for_voices()
        page.choose_files(files["samples"][:1])
        assert page.create_voice("Stored") == "Stored is ready: choose it under Speak."
        (tmp_path / "voices").rename(tmp_path / "unmounted")  # its volume is gone
        page.open()
        readiness = page.wait(lambda: "Unavailable" in page.text("readiness") and page.text("readiness"), 30)
        assert "data directory is missing" in readiness, readiness  # it said "database ok"
    finally:
        stop_server(server)


@slow
def test_refresh_checks_readiness_again(driver, tmp_path: Path, checkpoint_dir: Path) -> None:
    server = start_server(tmp_path, checkpoint_dir)
    port = int(server.url.rsplit(":", 1)[1])
    try:
        page = ConsolePage(driver, server.url).open()
        page.wait(lambda: page.text("readiness").startswith("Ready"), 30, "the service to be ready")
        stop_server(server)  # the service goes down while the page is open
        page.by_id("voices-refresh").click()
        page.wait(lambda: "could not be reached" in page.text("readiness"), 30, "the line to say it is down")
        server = start_server(tmp_path, checkpoint_dir, port=port)  # and comes back
        page.by_id("voices-refresh").click()
        page.wait(lambda: page.text("readiness").startswith("Ready"), 30, "the line to say it is back")
    finally:
        stop_server(server)


@slow
def test_readiness_gives_up_on_a_hung_server(driver, tmp_path: Path, checkpoint_dir: Path) -> None:
    server = start_server(tmp_path, checkpoint_dir)
    port = int(server.url.rsplit(":", 1)[1])
    try:
        page = ConsolePage(driver, server.url).open()
        page.wait(lambda: page.text("readiness").startswith("Ready"), 30, "the service to be ready")
        stop_server(server)
        with never_answering(port):  # a hung worker or proxy: it accepts the request and says nothing
            page.script("document.getElementById('readiness').dataset.timeoutMs = '1500'")  # not 5 s
            page.by_id("voices-refresh").click()
            readiness = page.wait(lambda: "not answer" in page.text("readiness") and page.text("readiness"),
                                  30, "the line to say the server did not answer")  # "Checking…" for ever
            assert readiness == "The service did not answer within 1.5 s: press Refresh to check again."
        server = start_server(tmp_path, checkpoint_dir, port=port)
        page.by_id("voices-refresh").click()
        page.wait(lambda: page.text("readiness").startswith("Ready"), 30, "the line to say it is back")
    finally:
        stop_server(server)


@slow
def test_the_voice_list_and_the_jobs_give_up_on_a_hung_server(driver, tmp_path: Path,
                                                             checkpoint_dir: Path) -> None:
    """Before, Refresh on a hung server never reached the jobs, and a hung poll stopped the polling."""
    server = start_server(tmp_path, checkpoint_dir)
    port = int(server.url.rsplit(":", 1)[1])
    try:
        page = ConsolePage(driver, server.url).open()
        page.wait_for_voices()
        stop_server(server)
        with never_answering(port):
            page.script("document.getElementById('voice-list').dataset.timeoutMs = '1500';"
                        "document.getElementById('job-list').dataset.timeoutMs = '1500'")  # not 10 s
            page.by_id("voices-refresh").click()
            voices = page.wait(lambda: "answer" in page.text("voices-status") and page.text("voices-status"),
                               30, "the voices to say the server did not answer")
            assert voices == "The server did not answer within 1.5 s. Press Refresh to try again."
            jobs = page.wait(lambda: "answer" in page.text("jobs-status") and page.text("jobs-status"),
                             30, "the jobs to say the server did not answer")
            assert jobs == "The server did not answer within 1.5 s."
        server = start_server(tmp_path, checkpoint_dir, port=port)
        # A new worker's first answers can take longer than 1.5 s.
        page.script("delete document.getElementById('voice-list').dataset.timeoutMs;"
                    "delete document.getElementById('job-list').dataset.timeoutMs")
        page.by_id("voices-refresh").click()  # back: both lines say so
        page.wait(lambda: page.text("voices-status").startswith("No voices of your own yet"), 30,
                  "the voice list to be back")
        page.wait(lambda: page.text("jobs-status") == "No fine-tuning jobs yet.", 30, "the jobs to be back")
    finally:
        stop_server(server)


@slow
def test_creating_a_voice_gives_up_on_a_hung_server(driver, tmp_path: Path, checkpoint_dir: Path,
                                                     files: dict) -> None:
    server = start_server(tmp_path, checkpoint_dir)
    port = int(server.url.rsplit(":", 1)[1])
    try:
        page = ConsolePage(driver, server.url).open()
        page.wait_for_voices()
        page.choose_files(files["samples"][:1])
        stop_server(server)
        with never_answering(port):
            page.script("document.getElementById('voice-form').dataset.timeoutMs = '2000'")  # not 5 min
            page.by_id("voice-name").send_keys("Hung")
            page.by_id("create-button").click()
            status = page.wait_for_status("create-status", 30)  # it said "Cloning…" for ever
            assert status == ("The server did not answer within 2 s. It may still make the voice: "
                              "press Refresh under Voices before trying again."), status
            assert page.by_id("create-button").is_enabled()
            assert page.by_id("voice-form").get_attribute("aria-busy") is None
            assert len(page.all("#takes li")) == 1  # kept for another try
            assert page.by_id("voice-name").get_attribute("value") == "Hung"
        server = start_server(tmp_path, checkpoint_dir, port=port)  # back: the same takes make the voice
        page.script("delete document.getElementById('voice-form').dataset.timeoutMs")  # cloning takes time
        page.by_id("create-button").click()
        page.wait(lambda: page.text("create-status") == "Hung is ready: choose it under Speak.", 120,
                  "the voice to be made")
    finally:
        stop_server(server)


@slow
def test_every_control_is_labelled_and_the_page_fits_a_phone(page: ConsolePage, files: dict) -> None:
    page.choose_files(files["samples"][:2])  # takes bring their own players, fields and buttons
    page.by_id("mode-finetune").click()
    assert page.by_id("voice-epochs").is_displayed()
    unlabelled = page.script("""
        const controls = 'input, select, textarea, button, canvas, audio, [role=progressbar]';
        return [...document.querySelectorAll(controls)]
          .filter(e => e.type !== 'hidden')
          .filter(e => !((e.labels && e.labels.length) || e.getAttribute('aria-label')
                        || e.getAttribute('aria-labelledby')
                        || (e.tagName === 'BUTTON' && e.textContent.trim())))
          .map(e => e.outerHTML.slice(0, 80));
    """)
    assert unlabelled == []
    live = page.script("return [...document.querySelectorAll('[aria-live], [role=alert]')].map(e => e.id)")
    assert {"notice", "readiness", "speak-status", "record-status", "create-status", "voices-status",
            "jobs-status"} <= set(live)
    assert "width=device-width" in page.script(
        "return document.querySelector('meta[name=viewport]').content")
    # Every control is reachable with the Tab key: none is taken out of the order.
    assert page.script("return [...document.querySelectorAll('button, input, select, textarea, a[href]')]"
                       ".filter(e => e.tabIndex < 0).length") == 0
    try:
        page.driver.set_window_size(390, 844)  # a phone
        page.wait(lambda: page.script("return window.innerWidth") <= 400, 10, "the narrow window")
        overflow = page.script("const root = document.documentElement;"
                               "return root.scrollWidth - root.clientWidth")
        assert overflow <= 0  # nothing needs sideways scrolling
        field = page.by_id("speak-text").rect
        assert field["x"] >= 0 and field["x"] + field["width"] <= 390
    finally:
        page.driver.set_window_size(1280, 1600)
    assert page.severe_log_entries() == []


@slow
def test_record_clone_speak_plays_while_streaming(page: ConsolePage, keyed: Server) -> None:
    page.record(5.0)
    assert re.fullmatch(r"Recorded [45]\.\d s\.", page.text("record-status"))
    status = page.create_voice("Microphone voice")
    assert status == "Microphone voice is ready: choose it under Speak."
    voice_id = page.by_id("speak-voice").get_attribute("value")
    assert voice_id.startswith("microphone-voice-")  # the new voice is chosen for speaking
    card = page.voice_card(voice_id).text
    assert "Microphone voice" in card and "ready" in card and "cloned" in card and "English (en)" in card
    assert page.all("#takes li") == []  # the form is ready for the next voice

    assert page.speak(LONG_TEXT, variability=0).startswith("Done: ")
    heard = page.player()
    assert "error" not in heard, heard
    assert heard["how"] == "media-source"  # MP3 into the element through MediaSource
    assert heard["duration"] > 3.0 and heard["currentTime"] > 0, heard  # it plays
    assert heard["playingAt"] < heard["endAt"], heard  # playback began before the stream ended
    assert abs(heard["waveSeconds"] - heard["duration"]) < 0.2, heard
    assert heard["painted"] > 1000 and heard["paintedRows"] > 10, heard  # a waveform, not a line
    assert heard["canvasLabel"].startswith("Waveform of the synthesised speech, ")
    assert not heard["linkHidden"] and heard["href"].startswith("blob:")
    assert heard["download"] == f"speech-{voice_id}.mp3"
    assert heard["blobType"] == "audio/mpeg" and heard["blobSize"] > 10_000, heard
    assert page.severe_log_entries() == []


@slow
def test_wav_plays_on_web_audio_as_it_streams(page: ConsolePage) -> None:
    voice_id = page.by_id("speak-voice").get_attribute("value")
    assert page.speak(LONG_TEXT, fmt="wav", variability=0).startswith("Done: ")
    heard = page.player()
    assert "error" not in heard, heard
    assert heard["how"] == "web-audio"
    assert heard["playingAt"] < heard["endAt"], heard
    # Three chunks of 0.97 s and two pauses of 0.18 s (tests/test_browser.py), now in the element too.
    assert 3.1 <= heard["duration"] <= 3.4 and 3.1 <= heard["waveSeconds"] <= 3.4, heard
    assert heard["download"] == f"speech-{voice_id}.wav" and heard["blobType"] == "audio/wav"
    # 24 kHz, 16-bit mono: the header and about 3.2 s of samples.
    assert 140_000 < heard["blobSize"] < 170_000, heard


@slow
def test_a_double_click_on_record_opens_the_microphone_once(page: ConsolePage) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    page.script("""
        window.streams = [];
        const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
        navigator.mediaDevices.getUserMedia = async (constraints) => {
          const stream = await open(constraints);
          window.streams.push(stream);
          return stream;
        };
    """)
    button = page.by_id("record-button")
    ActionChains(page.driver).double_click(button).perform()
    page.wait(lambda: button.get_attribute("aria-pressed") == "true", 30, "recording to start")
    page.wait(lambda: float(page.text("record-timer").split()[0]) >= 1, 30, "a second of recording")
    button.click()  # Stop
    page.wait(lambda: page.text("record-status").startswith("Recorded"), 30, "the take")
    # Stop released the microphone: no stream the page opened is still live.
    assert page.script("return window.streams.flatMap(s => s.getTracks())"
                       ".filter(t => t.readyState === 'live').length") == 0
    assert len(page.all("#takes li")) == 1


@slow
def test_a_take_added_while_a_voice_uploads_stays_for_the_next_voice(page: ConsolePage, files: dict) -> None:
    # The server holds its answer (a slow upload) until the test lets it through.
    page.script("""
        const original = window.fetch;
        window.hold = true;
        window.fetch = async (url, init) => {
          const answer = await original(url, init);
          while (window.hold && String(url).endsWith('api/train-voice')) {
            await new Promise((resolve) => setTimeout(resolve, 100));
          }
          return answer;
        };
    """)
    page.choose_files(files["samples"][:1])
    page.by_id("voice-name").send_keys("Uploaded first")
    page.by_id("create-button").click()
    page.wait(lambda: page.text("create-status") == "Cloning…", 10, "the upload to start")
    page.choose_files(files["samples"][1:2])  # meanwhile, a take for the next voice
    page.script("window.hold = false")
    assert page.wait_for_status("create-status") == "Uploaded first is ready: choose it under Speak."
    takes = page.all("#takes li")
    assert len(takes) == 1 and "sample-1.wav" in takes[0].text, [take.text for take in takes]


@slow
def test_a_too_short_recording_shows_the_servers_message(page: ConsolePage, keyed: Server) -> None:
    before = api(keyed, "GET", "/api/voices").json()["voices"]
    page.record(1.0)
    status = page.create_voice("Too short")
    assert re.fullmatch(r"The recording has only \d\.\d s of speech; at least 3\.0 s are needed\.", status)
    assert "error" in page.by_id("create-status").get_attribute("class")
    assert len(page.all("#takes li")) == 1  # kept, so the user can add to it or remove it
    assert api(keyed, "GET", "/api/voices").json()["voices"] == before


@slow
def test_an_epoch_count_left_behind_in_fine_tune_mode_does_not_block_cloning(page: ConsolePage,
                                                                              files: dict) -> None:
    page.choose_files(files["samples"][:1])
    page.by_id("voice-name").send_keys("Changed my mind")
    page.by_id("mode-finetune").click()
    epochs = page.by_id("voice-epochs")
    epochs.clear()
    epochs.send_keys("99")  # out of range; then the user picks Clone now, which hides the field
    page.by_id("mode-clone").click()
    page.by_id("create-button").click()
    assert page.wait_for_status("create-status", 60) == "Changed my mind is ready: choose it under Speak."


@slow
def test_rename_and_delete_a_voice(page: ConsolePage, keyed: Server) -> None:
    page.record(4.0)
    assert page.create_voice("Old name") == "Old name is ready: choose it under Speak."
    voice_id = page.by_id("speak-voice").get_attribute("value")

    card = page.voice_card(voice_id)
    card.find_element("xpath", ".//button[text()='Rename']").click()
    field = page.by_id(f"rename-{voice_id}")
    assert field == page.driver.switch_to.active_element  # the keyboard lands in the field
    field.clear()
    field.send_keys("New name\n")  # Enter submits
    page.wait(lambda: "New name" in page.voice_card(voice_id).text, 30, "the new name")
    page.wait(lambda: page.text("voices-status") == "Renamed to New name.", 10, "the announcement")
    active = page.driver.switch_to.active_element  # the form went: the keyboard is back on Rename
    assert active.text == "Rename" and active.get_attribute("aria-expanded") == "false"
    assert api(keyed, "GET", f"/api/voices/{voice_id}").json()["name"] == "New name"
    assert "New name" in page.script("return document.getElementById('speak-voice').selectedOptions[0].text")

    page.click_on_card(voice_id, "Delete")
    page.driver.switch_to.alert.accept()
    page.wait(lambda: not page.all(f'#voice-list li[data-voice-id="{voice_id}"]'), 30, "the card to go")
    page.wait(lambda: page.text("voices-status") == "Deleted New name.", 10, "the announcement")
    assert api(keyed, "GET", f"/api/voices/{voice_id}").status_code == 404
    assert voice_id not in page.voice_options()


@slow
def test_cancelling_a_rename_keeps_the_keyboard_on_the_card(page: ConsolePage, files: dict) -> None:
    from selenium.webdriver.common.keys import Keys

    page.choose_files(files["samples"][:1])
    assert page.create_voice("Kept name") == "Kept name is ready: choose it under Speak."
    voice_id = page.by_id("speak-voice").get_attribute("value")
    page.click_on_card(voice_id, "Rename")
    page.by_id(f"rename-{voice_id}").send_keys(Keys.TAB, Keys.TAB)  # past Save, to Cancel
    active = page.driver.switch_to.active_element
    assert active.text == "Cancel"
    active.send_keys(Keys.ENTER)
    page.wait(lambda: not page.all(f"#rename-{voice_id}"), 10, "the rename form to close")
    active = page.driver.switch_to.active_element
    assert active.text == "Rename" and active.get_attribute("aria-expanded") == "false"  # not lost to <body>


@slow
def test_a_voice_list_refresh_keeps_the_keyboard_on_its_control(page: ConsolePage, keyed: Server,
                                                                files: dict) -> None:
    # The page does not see the job end until the test has put the keyboard on the voice's card.
    page.script(r"""
        const original = window.fetch;
        window.jobsDown = true;
        window.fetch = (url, init) => window.jobsDown && /api\/jobs(\?|$)/.test(String(url))
          ? Promise.reject(new TypeError('Failed to fetch')) : original(url, init);
    """)
    page.choose_files(files["samples"])
    status = page.create_voice("Focused", transcripts=TEXTS, epochs=1)  # this checkpoint's job fails
    assert status.startswith("Focused is ready to speak now, and fine-tuning is queued"), status
    voice_id = page.by_id("speak-voice").get_attribute("value")
    rename = page.voice_card(voice_id).find_element("xpath", ".//button[text()='Rename']")
    page.script("arguments[0].focus()", rename)  # where a keyboard user has tabbed to
    # Renamed in another tab meanwhile: the card the job's end brings is not the one on the page.
    assert api(keyed, "PATCH", f"/api/voices/{voice_id}", json={"name": "Focused elsewhere"}).ok
    page.script("window.jobsDown = false")
    # The job's end refreshes the voice list (the voice may have become fine-tuned).
    page.wait(lambda: "failed" in page.text("jobs-status"), 120, "the job to end")
    heading = f"#voice-{voice_id}-name"
    page.wait(lambda: page.all(heading)[0].text == "Focused elsewhere", 30, "the list to re-render")
    focused = page.script("const e = document.activeElement;"
                          "return [e.closest('#voice-list > li')?.dataset.voiceId, e.textContent]")
    assert focused == [voice_id, "Rename"]  # it was dropped to <body>


@slow
def test_the_fine_tuning_choice_says_when_this_server_cannot_fine_tune(page: ConsolePage) -> None:
    # This checkpoint lacks the training files: /readyz's jobs.problem says so before anything is recorded.
    problem = page.wait(lambda: page.by_id("finetune-problem").is_displayed()
                        and page.text("finetune-problem"), 30, "the fine-tuning problem")
    assert problem.startswith("This server cannot fine-tune: ") and "dvae.pth" in problem, problem
    assert page.by_id("mode-finetune").get_attribute("aria-describedby") == "finetune-problem"


@slow
def test_a_job_queued_with_no_runner_asks_whether_one_runs(driver, tmp_path: Path, checkpoint_dir: Path,
                                                           files: dict) -> None:
    server = start_server(tmp_path, checkpoint_dir, VOICEFORGE_JOB_RUNNER="false", **FINE_TUNING)
    try:
        page = ConsolePage(driver, server.url).open()
        page.wait_for_voices()
        page.choose_files(files["samples"])
        status = page.create_voice("Unclaimed", transcripts=TEXTS, epochs=1)
        assert status.startswith("Unclaimed is ready to speak now, and fine-tuning is queued"), status
        # It waited without a word, for ever: nothing claims a job here.
        page.wait(lambda: "is a job runner running?" in page.job_card().text, 60, "the question")
        assert page.job_card().get_attribute("data-state") == "queued"
    finally:
        stop_server(server)


@slow
def test_a_failed_job_shows_its_reason(page: ConsolePage, files: dict) -> None:
    page.choose_files(files["samples"])
    status = page.create_voice("Untrainable", transcripts=TEXTS, epochs=1)
    assert status.startswith("Untrainable is ready to speak now, and fine-tuning is queued")
    page.wait(lambda: page.job_card().get_attribute("data-state") == "failed", 180, "the job to fail")
    card = page.job_card()
    # This checkpoint lacks the training files: the card and the announcement give the server's reason.
    reason = r"^Failed: The model directory \S+ has no dvae\.pth, mel_stats\.pth, which fine-tuning needs"
    assert re.search(reason, card.text, re.MULTILINE), card.text
    assert "Cancel" not in card.text
    assert "failed: " in page.text("jobs-status") and "dvae.pth" in page.text("jobs-status")


@slow
def test_a_fine_tuning_jobs_progress_bar_reaches_100_percent(driver, trainable: Server, files: dict) -> None:
    page = ConsolePage(driver, trainable.url).open()
    page.wait_for_voices()
    page.record(4.0)
    page.choose_files(files["samples"])
    status = page.create_voice("Tuned", transcripts=[TEXTS[0], *TEXTS], epochs=2)
    assert status.startswith("Tuned is ready to speak now, and fine-tuning is queued"), status
    voice_id = page.by_id("speak-voice").get_attribute("value")
    bar = page.job_card().find_element("css selector", "[role=progressbar]")
    assert bar.get_attribute("aria-valuemin") == "0" and bar.get_attribute("aria-valuemax") == "100"

    seen: list[int] = []

    def finished() -> bool:
        card = page.job_card()
        value = int(card.find_element("css selector", "[role=progressbar]").get_attribute("aria-valuenow"))
        if not seen or seen[-1] != value:
            seen.append(value)
        return card.get_attribute("data-state") in ("succeeded", "failed", "cancelled")

    page.wait(finished, 300, "the job to finish")
    card = page.job_card()
    assert card.get_attribute("data-state") == "succeeded", card.text
    bar = card.find_element("css selector", "[role=progressbar]")
    assert bar.get_attribute("aria-valuenow") == "100" and bar.text == "100%"
    assert bar.get_attribute("aria-valuetext") == "100%, epoch 2 of 2"
    assert page.script("return arguments[0].querySelector('.fill').getBoundingClientRect().width"
                       " / arguments[0].querySelector('.track').clientWidth", bar) > 0.99  # drawn full
    assert seen == sorted(seen) and any(0 < value < 100 for value in seen), seen  # it moved, live
    assert "Epoch\n2 of 2" in card.text and "Loss" in card.text
    assert "succeeded" in page.text("jobs-status")
    page.wait(lambda: "finetuned" in page.voice_card(voice_id).text, 30, "the voice to be fine-tuned")

    # A second job, cancelled from its card: it ends cancelled, and its Cancel button goes.
    page.choose_files(files["samples"])
    page.create_voice("Cancelled", transcripts=TEXTS, epochs=50)
    page.wait(lambda: page.job_card().get_attribute("data-state") in ("queued", "running"), 30)
    page.job_card().find_element("xpath", ".//button[text()='Cancel']").click()
    page.wait(lambda: page.job_card().get_attribute("data-state") == "cancelled", 120, "cancellation")
    assert "Cancel" not in page.job_card().find_element("css selector", ".actions").text \
        if page.job_card().find_elements("css selector", ".actions") else True
    assert "was cancelled" in page.wait(lambda: "cancelled" in page.text("jobs-status")
                                        and page.text("jobs-status"), 30)


def job_card_of(page: ConsolePage, name: str) -> list:
    """The card of the job that fine-tunes the voice called `name` (a list: empty while there is none)."""
    return [card for card in page.all("#job-list li")
            if card.find_element("css selector", "h3").text == f"Fine-tuning {name}"]


@slow
def test_jobs_polling_survives_failed_polls_and_clears_the_error(page: ConsolePage, files: dict) -> None:
    # Every GET /api/jobs fails, as during a server restart or a network blip, until the test lets it through.
    page.script(r"""
        const original = window.fetch;
        window.jobsDown = true;
        window.fetch = (url, init) => window.jobsDown && /api\/jobs(\?|$)/.test(String(url))
          ? Promise.reject(new TypeError('Failed to fetch')) : original(url, init);
    """)
    page.choose_files(files["samples"])
    status = page.create_voice("Blip", transcripts=TEXTS, epochs=1)
    assert status.startswith("Blip is ready to speak now, and fine-tuning is queued"), status
    page.wait(lambda: "could not be reached" in page.text("jobs-status"), 30, "the poll's error")
    page.script("window.jobsDown = false")
    # The page keeps polling: the job's card appears and reaches its end (this checkpoint cannot train).
    page.wait(lambda: job_card_of(page, "Blip") and job_card_of(page, "Blip")[0].get_attribute("data-state")
              == "failed", 120, "the job's card to reach its end")
    assert "could not be reached" not in page.text("jobs-status")

    # A wrong key's 401 is shown, and cleared once the right key loads the (non-empty) job list.
    page.use_key("wrong-key")
    page.wait(lambda: "valid API key is required" in page.text("jobs-status"), 30, "the 401")
    page.use_key(KEY)
    page.wait_for_voices()
    page.wait(lambda: "valid API key" not in page.text("jobs-status"), 30, "the 401 to be cleared")
    assert job_card_of(page, "Blip")


@slow
def test_a_late_answer_to_a_wrong_key_does_not_undo_the_right_one(page: ConsolePage) -> None:
    # The server is slow to refuse the mistyped key: its 401s arrive after the right key's answers.
    page.script("""
        const original = window.fetch;
        window.late = 0;
        window.fetch = (url, init) => {
          if (init?.headers?.Authorization !== 'Bearer wrong-key') return original(url, init);
          window.late++;
          return original(url, init).then((answer) => new Promise((resolve) => setTimeout(() => {
            window.late--;
            resolve(answer);
          }, 3000)));
        };
    """)
    page.use_key("wrong-key")
    page.use_key(KEY)  # corrected at once
    assert "default-female" in page.wait_for_voices()
    page.wait(lambda: page.script("return window.late === 0"), 30, "the late 401s to arrive")
    assert not page.by_id("notice").is_displayed(), page.text("notice")
    for status in ("voices-status", "jobs-status"):
        assert "valid API key" not in page.text(status), page.text(status)
    assert "default-female" in page.voice_options()


@slow
def test_jobs_queued_elsewhere_get_a_card(page: ConsolePage, keyed: Server, files: dict) -> None:
    def uri(path: Path) -> str:
        return "data:audio/wav;base64," + base64.b64encode(path.read_bytes()).decode()

    first, *others = files["samples"]
    answer = api(keyed, "POST", "/api/train-voice", json={
        "modelName": "Queued elsewhere", "audioDataUri": uri(first), "transcript": TEXTS[0], "fineTune": True,
        "epochs": 1, "samples": [{"audioDataUri": uri(path), "text": text}
                                 for path, text in zip(others, TEXTS, strict=False)]})
    assert answer.status_code in (200, 201, 202), answer.text
    page.by_id("voices-refresh").click()  # the page did not start it: Refresh picks it up
    page.wait(lambda: job_card_of(page, "Queued elsewhere"), 10, "the job's card")


@slow
def test_a_voice_deleted_elsewhere_leaves_the_list(page: ConsolePage, keyed: Server, files: dict) -> None:
    ids = []
    for name in ("Renamed elsewhere", "Deleted elsewhere"):
        page.choose_files(files["samples"][:1])
        assert page.create_voice(name) == f"{name} is ready: choose it under Speak."
        ids.append(page.by_id("speak-voice").get_attribute("value"))
    assert api(keyed, "DELETE", f"/api/voices/{ids[0]}").status_code == 204
    page.click_on_card(ids[0], "Rename")
    page.by_id(f"rename-{ids[0]}").send_keys(" again\n")
    page.wait(lambda: not page.all(f'#voice-list li[data-voice-id="{ids[0]}"]'), 30, "the card to go")
    assert page.text("voices-status") == "Renamed elsewhere is gone: it was deleted elsewhere."

    assert api(keyed, "DELETE", f"/api/voices/{ids[1]}").status_code == 204
    page.click_on_card(ids[1], "Delete")
    page.driver.switch_to.alert.accept()
    page.wait(lambda: not page.all(f'#voice-list li[data-voice-id="{ids[1]}"]'), 30, "the card to go")
    assert page.text("voices-status") == "Deleted elsewhere is gone: it was deleted elsewhere."
    assert not set(ids) & set(page.voice_options())


@slow
def test_a_job_that_ends_later_leaves_the_voices_message_shown(page: ConsolePage, keyed: Server,
                                                               files: dict) -> None:
    """A job's end refreshes the voice list (its voice may now be fine-tuned): that refresh wiped the
    message an action had just shown. The jobs API's answers are scripted here, to end a job on cue."""
    page.choose_files(files["samples"][:1])
    assert page.create_voice("Gone elsewhere") == "Gone elsewhere is ready: choose it under Speak."
    voice_id = page.by_id("speak-voice").get_attribute("value")
    page.script(r"""
        const original = window.fetch;
        window.jobState = 'running';
        window.voiceLists = 0;
        window.fetch = (url, init) => {
          if (/api\/voices$/.test(String(url))) window.voiceLists += 1;
          if (!/api\/jobs(\?|$)/.test(String(url))) return original(url, init);
          const job = {id: 'j1', voiceId: 'another-voice', kind: 'finetune', state: window.jobState,
                       progress: 0.5, epoch: 1, epochs: 2, step: 1, steps: 2, loss: null, message: '',
                       error: window.jobState === 'failed' ? 'Scripted.' : null, attempts: 1,
                       datasetSeconds: 20, createdAt: '2026-01-01T00:00:00+00:00', startedAt: null,
                       finishedAt: null};
          return Promise.resolve(new Response(JSON.stringify({jobs: [job]}),
                                              {headers: {'Content-Type': 'application/json'}}));
        };
    """)
    page.by_id("voices-refresh").click()  # the page now sees the job running, and polls it each second
    page.wait(lambda: job_card_of(page, "another-voice"), 10, "the job's card")
    assert api(keyed, "DELETE", f"/api/voices/{voice_id}").status_code == 204
    page.click_on_card(voice_id, "Rename")
    page.by_id(f"rename-{voice_id}").send_keys(" again\n")
    gone = "Gone elsewhere is gone: it was deleted elsewhere."
    page.wait(lambda: page.text("voices-status") == gone, 30, "the voice's message")
    lists = page.script("return window.voiceLists")
    page.script("window.jobState = 'failed'")
    page.wait(lambda: "failed" in page.text("jobs-status"), 30, "the job to end")
    page.wait(lambda: page.script("return window.voiceLists") > lists, 30, "the job's end to list voices")
    for _ in range(20):  # for 2 s after that refresh began, long enough for its answer to be shown
        assert page.text("voices-status") == gone  # it became ''
        time.sleep(0.1)


@slow
def test_speaking_with_a_voice_deleted_elsewhere_drops_it_from_the_choices(page: ConsolePage, keyed: Server,
                                                                           files: dict) -> None:
    page.choose_files(files["samples"][:1])
    assert page.create_voice("Spoken elsewhere") == "Spoken elsewhere is ready: choose it under Speak."
    voice_id = page.by_id("speak-voice").get_attribute("value")  # chosen for speaking
    assert api(keyed, "DELETE", f"/api/voices/{voice_id}").status_code == 204
    assert page.speak("Hello.") == f"Voice {voice_id!r} not found."
    page.wait(lambda: voice_id not in page.voice_options(), 30, "the voice to leave the choices")
    page.wait(lambda: not page.all(f'#voice-list li[data-voice-id="{voice_id}"]'), 30, "its card to go")


@slow
def test_a_refused_speech_leaves_no_download_of_the_last_one(page: ConsolePage) -> None:
    assert page.speak("Hello there.").startswith("Done: ")
    assert page.by_id("speak-download").is_displayed()
    assert page.speak("...").startswith("Text has nothing to speak")  # refused by the server
    assert not page.by_id("speak-download").is_displayed()  # it offered the last speech as this one
    assert page.by_id("speak-waveform").get_attribute("aria-label").endswith("(none yet)")


@contextmanager
def audio_contexts_kept(page: ConsolePage) -> Iterator[None]:
    """Reopen the page keeping every AudioContext it makes in window.contexts: does Web Audio still sound?"""
    hook = page.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": """
        window.contexts = [];
        window.AudioContext = class extends window.AudioContext {
          constructor(...args) { super(...args); window.contexts.push(this); }
        };"""})
    try:
        page.open()
        page.wait_for_voices()
        yield
    finally:
        page.driver.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument",
                                    {"identifier": hook["identifier"]})


@slow
def test_only_one_speech_sounds_at_a_time(page: ConsolePage) -> None:
    from selenium.webdriver.support.select import Select

    with audio_contexts_kept(page):
        page.script("document.getElementById('speak-text').value = arguments[0]", LONG_TEXT)
        Select(page.by_id("speak-format")).select_by_value("mp3")
        page.by_id("speak-button").click()
        assert page.wait_for_status("speak-status", 180).startswith("Done: ")
        audio = "document.getElementById('speak-audio')"
        page.script(f"{audio}.currentTime = 0; {audio}.play()")  # the user plays the MP3 again
        page.wait(lambda: page.script(f"return !{audio}.paused && {audio}.currentTime > 0"), 30,
                  "the MP3 to play")
        Select(page.by_id("speak-format")).select_by_value("wav")
        page.by_id("speak-button").click()  # while the MP3 still plays
        assert page.script(f"return {audio}.paused"), "the MP3 plays on under the WAV"
        assert page.wait_for_status("speak-status", 180).startswith("Done: ")
        assert page.script("return window.contexts.at(-1).state") != "closed"  # Web Audio played the WAV
        # The player now holds the WAV: playing it there stops Web Audio instead of adding a second copy.
        page.script(f"{audio}.play()")
        page.wait(lambda: page.script("return window.contexts.at(-1).state") == "closed", 10,
                  "Web Audio to stop")


@slow
def test_stop_silences_a_streaming_speech_and_frees_speak(page: ConsolePage) -> None:
    from selenium.webdriver.support.select import Select

    with audio_contexts_kept(page):
        # 39 chunks of speech: it streams for a good while after it starts to sound.
        page.script("document.getElementById('speak-text').value = arguments[0]", LONG_TEXT * 13)
        Select(page.by_id("speak-format")).select_by_value("wav")
        page.by_id("speak-button").click()
        page.wait(lambda: page.script("return window.contexts.at(-1)?.currentTime > 0"), 60,
                  "Web Audio to sound")
        assert not page.by_id("speak-button").is_enabled()
        page.by_id("speak-stop").click()
        page.wait(lambda: page.text("speak-status") == "Stopped.", 30, "the speech to stop")
        assert page.script("return window.contexts.at(-1).state") == "closed"  # nothing sounds any more
        assert page.by_id("speak-button").is_enabled()  # without waiting for the rest of the text
        assert page.speak("Again.", fmt="wav").startswith("Done: ")


def type_text(page: ConsolePage, field: object, text: str) -> None:
    """Type `text` into `field` as a keyboard or an input method would (ChromeDriver's send_keys takes
    no characters beyond the BMP, such as emoji; a script's `value =` would skip maxlength)."""
    page.script("arguments[0].focus()", field)
    page.driver.execute_cdp_cmd("Input.insertText", {"text": text})


@slow
def test_a_name_of_emoji_counts_as_the_server_counts(page: ConsolePage, keyed: Server, files: dict) -> None:
    # The server allows 100 characters (code points, after NFC and trimming); 60 emoji are 120 UTF-16 units.
    name = "\N{GRINNING FACE}" * 60
    field = page.by_id("voice-name")
    type_text(page, field, name)
    assert page.script("return arguments[0].value", field) == name  # maxlength=100 stopped it at 50
    page.choose_files(files["samples"][:1])
    page.by_id("create-button").click()
    assert page.wait_for_status("create-status") == f"{name} is ready: choose it under Speak."
    voice_id = page.by_id("speak-voice").get_attribute("value")
    assert api(keyed, "GET", f"/api/voices/{voice_id}").json()["name"] == name

    # One over: the page says so, and sends nothing.
    page.choose_files(files["samples"][:1])
    type_text(page, field, "\N{GRINNING FACE}" * 101)
    page.by_id("create-button").click()
    too_long = "Voice name is 101 characters long; at most 100 are allowed."
    assert page.wait_for_status("create-status") == too_long
    assert len(page.all("#takes li")) == 1  # kept, with the name, for a shorter try

    # Renaming counts the same way: 99 emoji and an e with its accent apart are 100 characters once
    # composed (NFC), as the server counts them; 101 emoji are refused on the page.
    page.click_on_card(voice_id, "Rename")
    rename = page.by_id(f"rename-{voice_id}")
    type_text(page, rename, "\N{GRINNING FACE}" * 101)  # replaces the selected old name
    rename.send_keys("\n")
    message = page.voice_card(voice_id).find_element("css selector", "form.rename .status")
    page.wait(lambda: message.text, 10, "the rename's message")
    assert message.text == too_long
    page.script("arguments[0].select()", rename)
    type_text(page, rename, "\N{GRINNING FACE}" * 99 + "e\N{COMBINING ACUTE ACCENT}")
    rename.send_keys("\n")
    renamed = "\N{GRINNING FACE}" * 99 + "\N{LATIN SMALL LETTER E WITH ACUTE}"
    page.wait(lambda: page.all(f"#voice-{voice_id}-name")[0].text == renamed, 30, "the new name")  # as stored
    assert page.text("voices-status") == f"Renamed to {renamed}."  # as stored, not as typed
    assert api(keyed, "GET", f"/api/voices/{voice_id}").json()["name"] == renamed


@slow
def test_long_unbroken_words_fit_a_phone(page: ConsolePage, files: dict, tmp_path: Path) -> None:
    long_file = tmp_path / "Voice_Memo_20240517_143211_kitchen_take3_from_the_phone_recorder.wav"
    shutil.copy(files["samples"][0], long_file)
    name = "W" * 100
    page.choose_files([long_file])
    assert page.create_voice(name) == f"{name} is ready: choose it under Speak."  # in #create-status
    voice_id = page.by_id("speak-voice").get_attribute("value")
    page.click_on_card(voice_id, "Rename")
    page.choose_files([long_file])  # a take labelled with the file's name
    try:
        page.driver.set_window_size(360, 800)
        page.wait(lambda: page.script("return window.innerWidth") <= 360, 10, "the narrow window")
        assert page.script("const root = document.documentElement;"
                           "return root.scrollWidth - root.clientWidth") <= 0  # no sideways scrolling
    finally:
        page.driver.set_window_size(1280, 1600)


# Another web app's camera recording, sent as the browser encodes it: MediaRecorder's audio+video type
# is "video/webm;codecs=vp8,opus", and FileReader keeps its comma in the data URI's header.
RECORD_WITH_CAMERA = """
const [key, done] = arguments;
(async () => {
  const stream = await navigator.mediaDevices.getUserMedia({audio: true, video: true});
  const recorder = new MediaRecorder(stream);
  const chunks = [];
  recorder.ondataavailable = (event) => chunks.push(event.data);
  const stopped = new Promise((resolve) => { recorder.onstop = resolve; });
  recorder.start();
  await new Promise((resolve) => setTimeout(resolve, 5000));
  recorder.stop();
  await stopped;
  stream.getTracks().forEach((track) => track.stop());
  const uri = await new Promise((resolve) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.readAsDataURL(new Blob(chunks, {type: recorder.mimeType}));
  });
  const answer = await fetch('/api/train-voice', {
    method: 'POST', headers: {'Content-Type': 'application/json', 'X-API-Key': key},
    body: JSON.stringify({modelName: 'Camera take', audioDataUri: uri})});
  done({header: uri.slice(0, uri.indexOf(',', uri.indexOf(';base64'))), status: answer.status,
        body: await answer.json()});
})().catch((error) => done({error: String(error)}));
"""


@slow
def test_a_camera_recordings_data_uri_from_chromium_enrols(driver, keyed: Server) -> None:
    driver.get(keyed.url + "/")
    result = driver.execute_async_script(RECORD_WITH_CAMERA, KEY)
    assert "error" not in result, result
    assert result["header"] == "data:video/webm;codecs=vp8,opus;base64", result["header"]
    assert result["status"] == 200, result["body"]
    voice = api(keyed, "GET", f"/api/voices/{result['body']['modelId']}").json()
    assert voice["name"] == "Camera take"
    assert api(keyed, "DELETE", f"/api/voices/{voice['id']}").status_code == 204
