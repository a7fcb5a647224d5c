"""The body of POST /v1/audio/speech checked field by field, and its Server-Sent Events framing."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Request

from voiceforge.audio.encode import FORMATS
from voiceforge.errors import UnsupportedMedia
from voiceforge.openai.errors import InvalidRequest
from voiceforge.openai.models import MODEL_NAMES
from voiceforge.openai.voices import resolve_voice

MAX_INPUT_CHARS = 4096  # OpenAI's limit for `input`
SPEED_RANGE = (0.25, 4.0)  # what OpenAI accepts
XTTS_SPEED_RANGE = (0.5, 2.0)  # what XTTS speaks naturally; requests are clamped to it
STREAM_FORMATS = ("audio", "sse")
# fetch() with a string body and no header sends text/plain; read JSON sent that way too, as /api does.
LENIENT_JSON_TYPES = {"", "text/plain"}


@dataclass(frozen=True)
class SpeechRequest:
    model: str
    input: str
    voice_id: str  # ours, after mapping an OpenAI name
    response_format: str
    speed: float  # already clamped to what XTTS speaks
    stream_format: str


def read_json(request: Request) -> dict[str, Any]:
    """The JSON object in the body: 415 for a non-JSON Content-Type, 400 when it is not an object."""
    mimetype = request.mimetype or ""
    if not (request.is_json or mimetype in LENIENT_JSON_TYPES):
        raise UnsupportedMedia(f"Send a JSON body (Content-Type: application/json), not {mimetype!r}.")
    try:
        body = json.loads(request.get_data(cache=True))
    except (ValueError, RecursionError):  # syntax, bad UTF-8, over-long integers, absurd nesting
        raise InvalidRequest("The body is not valid JSON.", param=None, code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.", param=None, code="invalid_json")
    return body


def parse_speech(body: Mapping[str, Any], voices: Mapping[str, str]) -> SpeechRequest:
    """Check every field OpenAI defines; 400 naming the first bad one. Unknown fields are ignored."""
    model = _required(body, "model")
    if not isinstance(model, str) or model not in MODEL_NAMES:
        given = f"Unknown model {model[:80]!r}" if isinstance(model, str) else "'model' must be a string"
        raise InvalidRequest(f"{given}; use one of {', '.join(MODEL_NAMES)}.", param="model",
                             code="model_not_found")
    text = _required(body, "input")
    if not isinstance(text, str) or not text:
        raise InvalidRequest("'input' must be a non-empty string.", param="input")
    if len(text) > MAX_INPUT_CHARS:
        raise InvalidRequest(f"'input' is {len(text)} characters long; the limit is {MAX_INPUT_CHARS}.",
                             param="input", code="string_above_max_length")
    voice_id = resolve_voice(_required(body, "voice"), voices)
    response_format = body.get("response_format", "mp3")
    if not isinstance(response_format, str) or response_format not in FORMATS:
        given = (f"Unknown response_format {response_format[:40]!r}" if isinstance(response_format, str)
                 else "'response_format' must be a string")
        raise InvalidRequest(f"{given}; use one of {', '.join(FORMATS)}.", param="response_format")
    speed = body.get("speed", 1.0)
    low, high = SPEED_RANGE
    # NaN and the infinities fail the range check too (math.isfinite would overflow on a huge integer).
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not low <= speed <= high:
        raise InvalidRequest(f"'speed' must be a number from {low} to {high}.", param="speed")
    stream_format = body.get("stream_format", "audio")
    if stream_format not in STREAM_FORMATS:
        raise InvalidRequest("'stream_format' must be 'audio' or 'sse'.", param="stream_format")
    # Accepted for compatibility and ignored: XTTS speaks like its voice and cannot follow prompts.
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("'instructions' must be a string.", param="instructions")
    return SpeechRequest(model, text, voice_id, response_format, clamp_speed(float(speed)), stream_format)


def clamp_speed(speed: float) -> float:
    """OpenAI's 0.25-4.0 onto XTTS's 0.5-2.0: beyond it XTTS's audio degrades rather than speeds up."""
    low, high = XTTS_SPEED_RANGE
    return min(max(speed, low), high)


def _required(body: Mapping[str, Any], name: str) -> Any:
    if body.get(name) is None:
        raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name,
                             code="missing_required_parameter")
    return body[name]


def sse_events(audio: Iterator[bytes], input_tokens: int) -> Iterator[bytes]:
    """`speech.audio.delta` events with the encoded bytes in base64 as they come, then `speech.audio.done`.

    Closing this (a client that goes away) closes the audio stream, which stops synthesis.
    """
    try:
        for data in audio:
            yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")})
        usage = {"input_tokens": input_tokens, "output_tokens": 0, "total_tokens": input_tokens}
        yield _event({"type": "speech.audio.done", "usage": usage})
    finally:
        audio.close()


def _event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()
