"""POST /api/tts: text to speech with a cloned or built-in voice."""

from __future__ import annotations

from voiceforge.api import ApiBlueprint
from voiceforge.audio.datauri import wav_data_uri
from voiceforge.audio.encode import encode_wav
from voiceforge.runtime import get_runtime
from voiceforge.schemas import ErrorSchema, TtsRequestSchema, TtsResponseSchema
from voiceforge.services import synthesis

blp = ApiBlueprint("tts", __name__, url_prefix="/api", description="Speech synthesis.")


@blp.route("/tts", methods=["POST"])
@blp.arguments(TtsRequestSchema)
@blp.response(200, TtsResponseSchema)
@blp.alt_response(401, schema=ErrorSchema, description="No valid API key (when the server requires keys).")
@blp.alt_response(400, schema=ErrorSchema, description="Malformed request.")
@blp.alt_response(404, schema=ErrorSchema, description="Unknown voice.")
@blp.alt_response(409, schema=ErrorSchema, description="Voice not ready.")
@blp.alt_response(413, schema=ErrorSchema, description="Body too large.")
@blp.alt_response(415, schema=ErrorSchema, description="Body is not JSON.")
@blp.alt_response(422, schema=ErrorSchema, description="Values out of range, unsupported language, no text.")
@blp.alt_response(503, schema=ErrorSchema, description="Model unavailable or busy (see Retry-After).")
def tts(body: dict) -> dict:
    """Speak `text` with `voiceId`; answers a WAV (mono, 16-bit, 24 kHz) as a data URI."""
    speech = synthesis.prepare(get_runtime(), body["text"], body["voiceId"], speed=body["speed"],
                               variability=body["variability"], language=body["language"])
    return {"audioDataUri": wav_data_uri(encode_wav(speech.audio(), speech.rate))}
