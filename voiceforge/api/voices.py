"""/api/voices: list, show, rename and delete voices."""

from __future__ import annotations

from voiceforge.api import ApiBlueprint
from voiceforge.models import Voice
from voiceforge.runtime import get_runtime
from voiceforge.schemas import (
    ErrorSchema,
    FineTuneRequestSchema,
    JobIdSchema,
    VoiceDetailSchema,
    VoiceListSchema,
    VoiceRenameSchema,
    VoiceSchema,
)
from voiceforge.services import finetuning, voices
from voiceforge.services.catalogue import BuiltinVoice

blp = ApiBlueprint("voices", __name__, url_prefix="/api/voices", description="The voice registry.")


@blp.route("")
@blp.response(200, VoiceListSchema)
@blp.alt_response(401, schema=ErrorSchema, description="No valid API key (when the server requires keys).")
@blp.alt_response(503, schema=ErrorSchema, description="Database busy or unavailable (see Retry-After).")
def list_voices() -> dict:
    """Cloned voices from the registry, then the model's built-in speakers."""
    return {"voices": [*voices.list_voices(), *get_runtime().catalogue.builtin_voices()]}


@blp.route("/<string:voice_id>")
@blp.response(200, VoiceDetailSchema)
@blp.alt_response(401, schema=ErrorSchema, description="No valid API key (when the server requires keys).")
@blp.alt_response(404, schema=ErrorSchema, description="Unknown voice.")
@blp.alt_response(503, schema=ErrorSchema, description="Database busy or unavailable (see Retry-After).")
def get_voice(voice_id: str) -> Voice | BuiltinVoice:
    """One voice: cloned (with its fine-tuning state), or a built-in speaker or alias."""
    voice = get_runtime().catalogue.describe(voice_id)
    if isinstance(voice, Voice):
        voice.fine_tuning = finetuning.fine_tuning_state(voice)  # read by VoiceDetailSchema
    return voice


@blp.route("/<string:voice_id>/fine-tune", methods=["POST"])
@blp.arguments(FineTuneRequestSchema)
@blp.response(202, JobIdSchema)
@blp.alt_response(401, schema=ErrorSchema, description="No valid API key (when the server requires keys).")
@blp.alt_response(400, schema=ErrorSchema, description="Malformed request or data URI.")
@blp.alt_response(404, schema=ErrorSchema, description="Unknown voice.")
@blp.alt_response(409, schema=ErrorSchema, description="A job for this voice is queued or running, or the "
                  "voice is built-in or not ready.")
@blp.alt_response(413, schema=ErrorSchema, description="Body or audio too large.")
@blp.alt_response(415, schema=ErrorSchema, description="Not audio, or an undecodable format.")
@blp.alt_response(422, schema=ErrorSchema, description="Too little speech (the figure is in the detail), a "
                  "sample without text, too many samples, epochs out of range.")
@blp.alt_response(503, schema=ErrorSchema, description="Database busy or unavailable (see Retry-After).")
@blp.alt_response(507, schema=ErrorSchema, description="Disk full; nothing was saved.")
def fine_tune(body: dict, voice_id: str) -> dict:
    """Fine-tune a cloned voice on more recordings of it; follow the job at /api/jobs/<jobId>."""
    voices.refuse_builtin(voice_id)
    runtime = get_runtime()
    voice = finetuning.finetunable_voice(voice_id)
    recordings = finetuning.recordings_from_body(runtime, body["samples"])
    job = finetuning.fine_tune_voice(runtime, voice, recordings, body["epochs"])
    return {"jobId": job.id}


@blp.route("/<string:voice_id>", methods=["PATCH"])
@blp.arguments(VoiceRenameSchema)
@blp.response(200, VoiceSchema)
@blp.alt_response(401, schema=ErrorSchema, description="No valid API key (when the server requires keys).")
@blp.alt_response(400, schema=ErrorSchema, description="Malformed JSON, or `name` missing or not a string.")
@blp.alt_response(404, schema=ErrorSchema, description="Unknown voice.")
@blp.alt_response(409, schema=ErrorSchema, description="Built-in voices cannot be renamed.")
@blp.alt_response(413, schema=ErrorSchema, description="Body too large.")
@blp.alt_response(415, schema=ErrorSchema, description="Body is not JSON.")
@blp.alt_response(422, schema=ErrorSchema, description="Invalid name.")
@blp.alt_response(503, schema=ErrorSchema, description="Database busy or unavailable (see Retry-After).")
@blp.alt_response(507, schema=ErrorSchema, description="Disk full under the database; nothing was changed.")
def rename_voice(body: dict, voice_id: str) -> Voice:
    """Rename a voice."""
    return voices.rename_voice(voice_id, body["name"])


@blp.route("/<string:voice_id>", methods=["DELETE"])
@blp.response(204)
@blp.alt_response(401, schema=ErrorSchema, description="No valid API key (when the server requires keys).")
@blp.alt_response(404, schema=ErrorSchema, description="Unknown voice.")
@blp.alt_response(409, schema=ErrorSchema, description="Built-in voices cannot be deleted.")
@blp.alt_response(503, schema=ErrorSchema, description="Database busy or unavailable (see Retry-After), or "
                  "the data directory not writable; nothing was changed.")
@blp.alt_response(507, schema=ErrorSchema, description="Disk full under the database; nothing was changed.")
def delete_voice(voice_id: str) -> None:
    """Delete a voice with its files and its fine-tuning jobs (a running job stops within seconds)."""
    voices.delete_voice(voice_id, get_runtime().settings.data_dir)
