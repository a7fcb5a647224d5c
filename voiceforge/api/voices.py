"""/api/voices: list, show, rename and delete voices."""

from __future__ import annotations

from voiceforge.api import ApiBlueprint
from voiceforge.runtime import get_runtime
from voiceforge.schemas import ErrorSchema, VoiceListSchema, VoiceRenameSchema, VoiceSchema
from voiceforge.services import voices

blp = ApiBlueprint("voices", __name__, url_prefix="/api/voices", description="The voice registry.")


@blp.route("")
@blp.response(200, VoiceListSchema)
@blp.alt_response(401, schema=ErrorSchema, description="No valid API key (when the server requires keys).")
@blp.alt_response(503, schema=ErrorSchema, description="Database busy or unavailable (see Retry-After).")
def list_voices() -> dict:
    """Cloned voices from the registry, then the model's built-in speakers."""
    return {"voices": [*voices.list_voices(), *get_runtime().catalogue.builtin_voices()]}


@blp.route("/<string:voice_id>")
@blp.response(200, VoiceSchema)
@blp.alt_response(401, schema=ErrorSchema, description="No valid API key (when the server requires keys).")
@blp.alt_response(404, schema=ErrorSchema, description="Unknown voice.")
@blp.alt_response(503, schema=ErrorSchema, description="Database busy or unavailable (see Retry-After).")
def get_voice(voice_id: str):
    """One voice: cloned, or a built-in speaker or alias."""
    return get_runtime().catalogue.describe(voice_id)


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
def rename_voice(body: dict, voice_id: str):
    """Rename a voice."""
    return voices.rename_voice(voice_id, body["name"])


@blp.route("/<string:voice_id>", methods=["DELETE"])
@blp.response(204)
@blp.alt_response(401, schema=ErrorSchema, description="No valid API key (when the server requires keys).")
@blp.alt_response(404, schema=ErrorSchema, description="Unknown voice.")
@blp.alt_response(409, schema=ErrorSchema, description="Built-in voices cannot be deleted.")
@blp.alt_response(503, schema=ErrorSchema, description="Database busy or unavailable (see Retry-After).")
def delete_voice(voice_id: str) -> None:
    """Delete a voice with its files."""
    voices.delete_voice(voice_id, get_runtime().settings.data_dir)
