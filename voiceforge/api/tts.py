"""POST /api/tts (whole response in a data URI) and POST /api/tts/stream (audio bytes as produced)."""

from __future__ import annotations

from flask import Response

from voiceforge.api import ApiBlueprint
from voiceforge.audio.datauri import audio_data_uri
from voiceforge.audio.encode import FORMATS, encode
from voiceforge.runtime import get_runtime
from voiceforge.schemas import ErrorSchema, TtsRequestSchema, TtsResponseSchema
from voiceforge.services import synthesis
from voiceforge.services.streaming import audio_response

# The stream's Content-Type, one per format (wav: the default).
STREAM_TYPES = ("audio/wav", "audio/mpeg", "audio/ogg", "audio/aac", "audio/flac", "audio/pcm")

blp = ApiBlueprint("tts", __name__, url_prefix="/api", description="Speech synthesis.")

ERRORS = {
    401: "No valid API key (when the server requires keys).",
    400: "Malformed request.",
    404: "Unknown voice.",
    409: "Voice not ready.",
    413: "Body too large.",
    415: "Body is not JSON.",
    422: "Values out of range, unsupported language or format, no text.",
    503: "Model unavailable or busy (see Retry-After).",
}


def _prepare(body: dict) -> synthesis.Speech:
    return synthesis.prepare(get_runtime(), body["text"], body["voiceId"], speed=body["speed"],
                             variability=body["variability"], language=body["language"])


@blp.route("/tts", methods=["POST"])
@blp.arguments(TtsRequestSchema)
@blp.response(200, TtsResponseSchema)
@blp.doc(responses={str(status): {"description": text, "content": {
    "application/json": {"schema": ErrorSchema}}} for status, text in ERRORS.items()})
def tts(body: dict) -> dict:
    """Speak `text` with `voiceId`; answers the audio (WAV by default: mono, 16-bit, 24 kHz) as a data URI."""
    speech = _prepare(body)
    audio = encode(speech.audio(), speech.rate, body["format"])
    return {"audioDataUri": audio_data_uri(audio, FORMATS[body["format"]].mime_type_at(speech.rate))}


@blp.route("/tts/stream", methods=["POST"])
@blp.arguments(TtsRequestSchema)
@blp.response(200)
@blp.doc(responses={
    "200": {"description": "Audio bytes in the requested format, sent as they are synthesised (chunked "
                           "transfer). audio/wav is a header of unknown length, then PCM; audio/pcm is raw "
                           "16-bit little-endian mono (rate=24000;channels=1).",
            "content": {mime: {"schema": {"type": "string", "format": "binary"}} for mime in STREAM_TYPES}},
    **{str(status): {"description": text, "content": {"application/json": {"schema": ErrorSchema}}}
       for status, text in ERRORS.items()}})
def tts_stream(body: dict) -> Response:
    """Speak `text` as a stream: every error that can be known before the audio answers JSON as /api/tts does.

    A failure after the first byte ends the stream without its final chunk (and is logged); a client
    that disconnects stops synthesis at the next decoding step once the server notices (its next write).
    """
    return audio_response(_prepare(body), body["format"])
