"""POST /api/train-voice: enrol (clone) a voice from a reference recording, optionally fine-tune it."""

from __future__ import annotations

from voiceforge.api import ApiBlueprint
from voiceforge.runtime import get_runtime
from voiceforge.schemas import ErrorSchema, TrainVoiceRequestSchema, TrainVoiceResponseSchema
from voiceforge.services import finetuning
from voiceforge.services.training import enrol_from_data_uri

blp = ApiBlueprint("training", __name__, url_prefix="/api", description="Voice cloning.")


@blp.route("/train-voice", methods=["POST"])
@blp.arguments(TrainVoiceRequestSchema)
@blp.response(200, TrainVoiceResponseSchema)
@blp.alt_response(202, schema=TrainVoiceResponseSchema,
                  description="With fineTune: cloned and usable now; a fine-tuning job is queued.")
@blp.alt_response(401, schema=ErrorSchema, description="No valid API key (when the server requires keys).")
@blp.alt_response(400, schema=ErrorSchema, description="Malformed request or data URI.")
@blp.alt_response(409, schema=ErrorSchema, description="A fine-tuning job for this voice is already active.")
@blp.alt_response(413, schema=ErrorSchema, description="Body or audio too large.")
@blp.alt_response(415, schema=ErrorSchema, description="Not audio, or an undecodable format.")
@blp.alt_response(422, schema=ErrorSchema, description="Too short, silent, bad name or language; with "
                  "fineTune: too little speech (the figure is in the detail) or a sample without text.")
@blp.alt_response(503, schema=ErrorSchema, description="Model unavailable or busy (see Retry-After).")
@blp.alt_response(507, schema=ErrorSchema, description="Disk full; nothing was saved.")
def train_voice(body: dict) -> dict | tuple[dict, int]:
    """Clone a voice: the answer's `modelId` is the `voiceId` for /api/tts.

    With `fineTune: true` the voice is cloned exactly the same way (usable at once) and a job that
    fine-tunes XTTS-v2 on the recordings is queued: 202 with its `jobId`.
    """
    runtime = get_runtime()
    if not body["fineTune"]:
        voice = enrol_from_data_uri(runtime, body["modelName"], body["audioDataUri"], body["language"])
        return {"trainingStatus": "completed", "modelId": voice.id}
    voice, job = finetuning.enrol_and_fine_tune(runtime, body["modelName"], body["audioDataUri"],
                                                body["language"], body["transcript"], body["samples"],
                                                body["epochs"])
    return {"trainingStatus": "queued", "modelId": voice.id, "jobId": job.id}, 202
