"""The /v1 blueprint: OpenAI's speech endpoint, its model list and a voice list, on our engine."""

from __future__ import annotations

from flask import Blueprint, Response, request
from werkzeug.wsgi import ClosingIterator

from voiceforge.errors import Conflict, NotFound, Unprocessable
from voiceforge.openai.errors import ModelNotFound
from voiceforge.openai.models import MODEL_NAMES, model_object
from voiceforge.openai.speech import parse_speech, read_json, sse_events
from voiceforge.openai.voices import voice_list
from voiceforge.runtime import Runtime, get_runtime
from voiceforge.services import synthesis
from voiceforge.services.streaming import audio_response, encoded_stream

# Not a flask-smorest blueprint: OpenAI's own documents describe this API, /api/openapi.json does not.
blp = Blueprint("openai", __name__, url_prefix="/v1")

VARIABILITY = 0.5  # the model's own sampling defaults (temperature 0.75, top-p 0.85)
# Sent as produced: no proxy buffering, no caching of one person's speech (as audio_response does).
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


@blp.post("/audio/speech")
def create_speech() -> Response:
    """Speak `input`: audio bytes as they are produced, or SSE events with the same bytes in base64.

    Every error that can be known before the audio (parameters, voice, text, model, a full queue)
    answers JSON in OpenAI's shape; a failure after the first byte ends the stream early.
    """
    runtime = get_runtime()
    params = parse_speech(read_json(request), runtime.settings.openai_voices)
    try:
        speech = synthesis.prepare(runtime, params.input, params.voice_id, speed=params.speed,
                                   variability=VARIABILITY, language=None)
    except (NotFound, Conflict) as error:
        error.extra.setdefault("param", "voice")  # the only thing prepare() looks up
        raise
    except Unprocessable as error:
        error.extra.setdefault("param", "input")  # with no language given, only the text can be unusable
        raise
    if params.stream_format == "audio":
        return audio_response(speech, params.response_format)  # exactly what /api/tts/stream sends
    try:
        tokens = input_tokens(runtime, speech)
    except BaseException:
        speech.close()  # give the queue place back: no audio will be made
        raise
    audio = encoded_stream(speech, params.response_format)  # the first audio (or its error) awaited here
    # Closed by the server even if it never began sending (the client left): synthesis stops.
    events = ClosingIterator(sse_events(audio, tokens), [audio.close])
    response = Response(events, mimetype="text/event-stream", headers=SSE_HEADERS)
    # Nothing may ask for the length first: that would synthesise the whole text before the first event.
    response.implicit_sequence_conversion = False
    return response


def input_tokens(runtime: Runtime, speech: synthesis.Speech) -> int:
    """The text tokens XTTS reads for this speech: the `usage` SSE's done event reports.

    prepare() has loaded the model and run the same tokenizer on every chunk, so this is cheap.
    """
    return sum(len(runtime.engine.text_tokens(chunk, speech.language)) for chunk in speech.chunks_of_text)


@blp.get("/models")
def list_models() -> dict:
    return {"object": "list", "data": [model_object(name) for name in MODEL_NAMES]}


@blp.get("/models/<model_id>")
def get_model(model_id: str) -> dict:
    if model_id not in MODEL_NAMES:
        raise ModelNotFound(model_id)
    return model_object(model_id)


@blp.get("/audio/voices")
def list_voices() -> dict:
    return {"voices": voice_list(get_runtime())}
