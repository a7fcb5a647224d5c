"""Formats on /api/tts, POST /api/tts/stream, and windowed streaming that matches the whole response."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support.audio import decode_output
from tests.support.checkpoint import build_checkpoint
from tests.support.server import start_server, stop_server
from voiceforge.audio.encode import FORMATS
from voiceforge.runtime import get_runtime
from voiceforge.services import synthesis

RATE = 24000
MIME = {"wav": "audio/wav", "mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac",
        "flac": "audio/flac", "pcm": "audio/pcm;rate=24000;channels=1"}
# 127 characters: each is its own chunk (sentences are merged into chunks of up to 250 characters).
SENTENCE = ("This sentence is long enough that two of them can never be merged into one chunk of speech, "
            "since together they pass the limit. ")


@pytest.fixture(scope="module")
def long_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generation runs to 117 audio tokens (about 5 s): enough for several streaming windows."""
    return build_checkpoint(tmp_path_factory.mktemp("long") / "xtts", max_audio_tokens=120)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_tts_answers_every_format_as_a_data_uri_of_its_mime_type(client, fmt: str) -> None:
    body = {"text": "Hello there.", "voiceId": "default-female", "variability": 0, "format": fmt}
    uri = client.post("/api/tts", json=body).json["audioDataUri"]
    prefix = f"data:{MIME[fmt]};base64,"
    assert uri.startswith(prefix)
    rate, samples = decode_output(base64.b64decode(uri[len(prefix):]), fmt)
    assert rate == (48000 if fmt == "opus" else RATE)
    assert 0.9 <= samples.size / rate <= 1.2  # 21 tokens of the tiny model: about 0.97 s


def test_wav_stays_the_default_and_an_unknown_format_is_422(client) -> None:
    body = {"text": "Hello there.", "voiceId": "default-female", "variability": 0}
    default = client.post("/api/tts", json=body).json["audioDataUri"]
    assert default == client.post("/api/tts", json={**body, "format": "wav"}).json["audioDataUri"]
    refused = client.post("/api/tts", json={**body, "format": "ogg"})
    assert refused.status_code == 422 and "format" in refused.json["detail"]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_the_stream_decodes_to_the_same_length_as_the_whole_response(client, fmt: str) -> None:
    body = {"text": SENTENCE + SENTENCE, "voiceId": "default-male", "variability": 0, "format": fmt}
    streamed = client.post("/api/tts/stream", json=body)
    assert streamed.status_code == 200 and streamed.mimetype == MIME[fmt].split(";")[0]
    assert streamed.headers["Content-Type"].startswith(MIME[fmt])
    whole = client.post("/api/tts", json=body).json["audioDataUri"].split(",", 1)[1]
    rate, stream_samples = decode_output(streamed.data, fmt)
    _, whole_samples = decode_output(base64.b64decode(whole), fmt)
    # Codec framing may add up to ~0.1 s (aac priming, mp3 without its Xing header).
    assert abs(stream_samples.size - whole_samples.size) / rate < 0.1


def test_errors_known_before_the_audio_answer_json_as_tts_does(client) -> None:
    for body, status in (({"text": "Hi", "voiceId": "nobody-00000000"}, 404),
                         ({"text": "", "voiceId": "default-female"}, 422),
                         ({"text": "मेरे पास 5 सेब हैं", "voiceId": "default-female", "language": "hi"}, 422),
                         ({"text": "Hi", "voiceId": "default-female", "format": "midi"}, 422),
                         ({"voiceId": "default-female"}, 400)):
        streamed = client.post("/api/tts/stream", json=body)
        whole = client.post("/api/tts", json=body)
        assert streamed.status_code == whole.status_code == status
        assert streamed.json["detail"] == whole.json["detail"]


@pytest.mark.parametrize("speed", [1.0, 0.7, 1.6])
def test_whole_and_streamed_speech_have_stock_xtts_tokens_and_audio(
        make_app, long_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, speed: float) -> None:
    """Our decoder and windowed vocoder against stock `model.inference`, greedy."""
    app = make_app(MODEL_DIR=str(long_checkpoint))
    runtime = get_runtime(app)
    model = runtime.engine.model
    stock_tokens: list[list[int]] = []
    generate = model.gpt.generate

    def spying_generate(*args: object, **kwargs: object):
        codes = generate(*args, **kwargs)
        stock_tokens.append(codes[0].tolist())
        return codes

    monkeypatch.setattr(model.gpt, "generate", spying_generate)
    greedy = synthesis.sampling_for(0)
    with app.app_context():
        voice = runtime.catalogue.handle("default-female")
        import torch

        with torch.inference_mode():
            stock = model.inference("Streaming test.", "en", voice.latents.gpt_cond_latent,
                                    voice.latents.speaker_embedding, do_sample=False, speed=speed,
                                    repetition_penalty=greedy.repetition_penalty)["wav"]
        (whole,) = runtime.engine.speak(["Streaming test."], "en", voice.latents, greedy, speed)
        (streamed,) = runtime.engine.speak(["Streaming test."], "en", voice.latents, greedy, speed,
                                           streaming=True)
        whole_audio = whole.audio()
        pieces = list(streamed.pieces())
    assert len(stock_tokens[0]) == 117 and stock_tokens == [whole.tokens] == [streamed.tokens]
    assert len(pieces) >= 4  # windows of 8, 16, 32, then the remaining 61 tokens
    for audio in (whole_audio, np.concatenate(pieces)):
        assert audio.size == stock.size
        # Below one step of 16-bit audio (measured: at most 1.6e-5 with 8 frames of vocoder context).
        assert np.abs(audio - stock).max() < 1 / 32768


def test_a_streams_later_sentences_come_in_full_windows_with_the_same_audio(
        make_app, long_checkpoint: Path) -> None:
    """Only the first sentence needs a small first window; later ones are decoded while it plays, and
    bigger windows re-vocode less context. Every sentence still sounds as in the whole response."""
    app = make_app(MODEL_DIR=str(long_checkpoint))
    engine = get_runtime(app).engine
    greedy = synthesis.sampling_for(0)
    texts = ["The first sentence starts the stream.", "The second follows it."]
    with app.app_context():
        latents = get_runtime(app).catalogue.handle("default-female").latents
        wholes = [item.audio() for item in engine.speak(texts, "en", latents, greedy)]
        first, second = engine.speak(texts, "en", latents, greedy, streaming=True)
        (later,) = engine.speak(texts[:1], "en", latents, greedy, streaming=True, continuing=True)
        pieces = [list(item.pieces()) for item in (first, second, later)]
    tokens = 1024  # output samples per audio token
    assert len(pieces[0]) == 4 and pieces[0][0].size <= 8 * tokens  # windows of 8, 16, 32, 61 tokens
    assert [len(p) for p in pieces[1:]] == [2, 2] and pieces[1][0].size > 60 * tokens  # 64, then 53
    for streamed, whole in zip(pieces, [*wholes, wholes[0]], strict=True):
        assert np.abs(np.concatenate(streamed) - whole).max() < 1 / 32768


def test_a_stream_starts_its_first_sentence_alone_and_the_rest_once_its_audio_is_out(
        make_app, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first audio never waits behind a long text; the rest are then decoded together."""
    app = make_app()
    runtime = get_runtime(app)
    engine = runtime.engine
    calls: list[tuple[int, int]] = []  # (texts handed in, tokens the first sentence had by then)
    speak = engine.speak

    def spying_speak(texts: list[str], *args: object, **kwargs: object):
        calls.append((len(texts), len(first[0].tokens) if first else 0))
        utterances = speak(texts, *args, **kwargs)
        first.extend(utterances[:1] if not first else [])
        return utterances

    first: list = []
    monkeypatch.setattr(engine, "speak", spying_speak)
    with app.app_context():
        speech = synthesis.prepare(runtime, SENTENCE * 4, "default-female", variability=0)
        pieces = list(speech.stream())
    assert [count for count, _ in calls] == [1, 3]
    assert calls[1][1] >= 8  # the first window of tokens was decoded before the others were queued
    assert sum(piece.size for piece in pieces) > 4 * 0.9 * RATE  # four sentences of about 1 s each


def test_a_stream_closed_mid_sentence_stops_decoding_that_sentence(
        make_app, long_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that leaves while a sentence plays (the server closes the stream) must free that
    sentence's row at once, not leave it decoding to the token cap for nobody."""
    app = make_app(MODEL_DIR=str(long_checkpoint))
    runtime = get_runtime(app)
    engine = runtime.engine
    spoken: list = []
    speak = engine.speak

    def recording_speak(*args: object, **kwargs: object) -> list:
        spoken.extend(utterances := speak(*args, **kwargs))
        return utterances

    monkeypatch.setattr(engine, "speak", recording_speak)
    with app.app_context():
        stream = synthesis.prepare(runtime, "One sentence that nobody hears to its end.", "default-female",
                                   variability=0).stream()  # returns once its first window is out
        stream.close()
    (sentence,) = spoken
    assert sentence.cancelled
    scheduler = engine.decoder()
    deadline = time.monotonic() + 60
    while scheduler._live and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(sentence.tokens) < scheduler.decoder.max_new_tokens / 2  # 117 if left to run


def test_streamed_sampling_with_variability_still_varies(make_app) -> None:
    client = make_app().test_client()
    body = {"text": "Hello there.", "voiceId": "default-female", "variability": 1.0, "format": "pcm"}
    assert len({client.post("/api/tts/stream", json=body).data for _ in range(3)}) > 1
    greedy = {**body, "variability": 0}
    first, second = (client.post("/api/tts/stream", json=greedy).data for _ in range(2))
    assert first == second


@pytest.mark.slow
def test_behind_gunicorn_first_bytes_come_early_and_a_disconnect_frees_the_engine(
        tmp_path: Path, checkpoint_dir: Path) -> None:
    server = start_server(tmp_path, checkpoint_dir, VOICEFORGE_INFERENCE_QUEUE_SIZE="1")
    try:
        one = {"text": "Warm up.", "voiceId": "default-female", "variability": 0, "format": "pcm"}
        started = time.perf_counter()
        assert requests.post(server.url + "/api/tts", json=one, timeout=60).status_code == 200
        started = time.perf_counter()
        assert requests.post(server.url + "/api/tts", json=one, timeout=60).status_code == 200
        per_sentence = time.perf_counter() - started

        long = {**one, "text": SENTENCE * 12}  # 12 chunks: many seconds of synthesis
        started = time.perf_counter()
        with requests.post(server.url + "/api/tts/stream", json=long, stream=True, timeout=120) as response:
            assert response.headers.get("Transfer-Encoding") == "chunked"
            first = next(response.iter_content(4096))
            first_at = time.perf_counter() - started
            assert first
        # The client has gone: synthesis must stop within about one window, giving the only
        # queue place back long before the other 11 chunks could have been spoken.
        gone = time.perf_counter()
        deadline = gone + 11 * per_sentence
        while True:
            retry = requests.post(server.url + "/api/tts", json=one, timeout=60)
            if retry.status_code == 200 or time.perf_counter() > deadline:
                break
            time.sleep(0.05)
        freed_after = time.perf_counter() - gone
        assert retry.status_code == 200
        assert freed_after < 4 * per_sentence, (freed_after, per_sentence)
        assert first_at < 2 * per_sentence, (first_at, per_sentence)
        time.sleep(0.3)
        assert "client went away" in server.log.read_text()
    finally:
        stop_server(server)


def test_a_failure_after_the_first_byte_ends_the_stream_and_is_logged(
        client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, lookahead: int) -> None:
    from voiceforge.decoding import scheduler

    real = scheduler.vocode
    calls: list[int] = []

    def breaks_at_the_second_window(model: object, windows: list) -> object:
        calls.append(len(windows))
        if len(calls) == 2:
            raise RuntimeError("the GPU fell off the bus")
        yield from real(model, windows)

    monkeypatch.setattr(scheduler, "vocode", breaks_at_the_second_window)
    body = {"text": "Hello there.", "voiceId": "default-female", "variability": 0, "format": "pcm"}
    response = client.post("/api/tts/stream", json=body, buffered=False)
    assert response.status_code == 200  # the status line went out before the audio
    received = b""
    with pytest.raises(RuntimeError, match="fell off"):
        for chunk in response.response:
            received += chunk
    assert received  # the first bytes arrived, then the stream ended instead of completing
    assert "synthesis failed after" in caplog.text
    # The queue place was given back and the decoder carries on: the next request is served.
    assert client.post("/api/tts", json=body).status_code == 200
