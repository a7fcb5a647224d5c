"""POST /api/train-voice: enrol (clone) a voice from a reference recording."""

from __future__ import annotations

from voiceforge.api import ApiBlueprint
from voiceforge.runtime import get_runtime
from voiceforge.schemas import ErrorSchema, TrainVoiceRequestSchema, TrainVoiceResponseSchema
from voiceforge.services.training import enrol_from_data_uri

blp = ApiBlueprint("training", __name__, url_prefix="/api", description="Voice cloning.")


@blp.route("/train-voice", methods=["POST"])
@blp.arguments(TrainVoiceRequestSchema)
@blp.response(200, TrainVoiceResponseSchema)
@blp.alt_response(401, schema=ErrorSchema, description="No valid API key (when the server requires keys).")
@blp.alt_response(400, schema=ErrorSchema, description="Malformed request or data URI.")
@blp.alt_response(413, schema=ErrorSchema, description="Body or audio too large.")
@blp.alt_response(415, schema=ErrorSchema, description="Not audio, or an undecodable format.")
@blp.alt_response(422, schema=ErrorSchema, description="Too short, silent, bad name or language.")
@blp.alt_response(503, schema=ErrorSchema, description="Model unavailable or busy (see Retry-After).")
@blp.alt_response(507, schema=ErrorSchema, description="Disk full; nothing was saved.")
def train_voice(body: dict) -> dict:
    """Clone a voice: the answer's `modelId` is the `voiceId` for /api/tts."""
    voice = enrol_from_data_uri(get_runtime(), body["modelName"], body["audioDataUri"], body["language"])
    return {"trainingStatus": "completed", "modelId": voice.id}
