"""The HTTP API: flask-smorest setup (OpenAPI, request parsing) and the per-resource blueprints."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask_smorest import Api, Blueprint
from marshmallow import Schema, ValidationError
from webargs.flaskparser import FlaskParser, abort

from voiceforge.errors import UnsupportedMedia
from voiceforge.schemas import ErrorSchema

# fetch() with a string body and no header sends text/plain; accept JSON sent that way too.
LENIENT_JSON_TYPES = {"", "text/plain"}


class JsonParser(FlaskParser):
    """webargs parser: 400 for malformed bodies (syntax, types, missing fields), 422 for bad values."""

    def _raw_load_json(self, req: Any) -> Any:
        mimetype = req.mimetype or ""
        if not (req.is_json or mimetype in LENIENT_JSON_TYPES):
            raise UnsupportedMedia(f"Send a JSON body (Content-Type: application/json), not {mimetype!r}.")
        return super()._raw_load_json(_ForceJson(req)) if not req.is_json else super()._raw_load_json(req)

    def handle_error(self, error: ValidationError, req: Any, schema: Schema, *,
                     error_status_code: int | None, error_headers: dict | None) -> None:
        status = error_status_code or (400 if is_structural(error, schema) else 422)
        abort(status, exc=error, messages=error.messages, schema=schema, headers=error_headers)


class _ForceJson:
    """Presents a text/plain request to webargs as JSON (it checks `is_json` before parsing)."""

    def __init__(self, req: Any) -> None:
        self._req = req

    is_json = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._req, name)


def is_structural(error: ValidationError, schema: Schema) -> bool:
    """True when the body is malformed (wrong type, missing, not an object) rather than out of range."""
    messages = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
    for location_messages in messages.values():
        if not isinstance(location_messages, dict):
            return True
        for field_name, field_messages in location_messages.items():
            field = schema.fields.get(field_name)
            if field is None:
                return True
            structural = set(field.error_messages.values())
            if any(message in structural for message in _flatten(field_messages)):
                return True
    return False


def _flatten(messages: Any) -> list[str]:
    if isinstance(messages, dict):
        return [m for value in messages.values() for m in _flatten(value)]
    if isinstance(messages, list | tuple):
        return [m for value in messages for m in _flatten(value)]
    return [str(messages)]


class ApiBlueprint(Blueprint):
    """Blueprint whose request bodies go through JsonParser."""

    ARGUMENTS_PARSER = JsonParser()


class VoiceForgeApi(Api):
    """flask-smorest Api documenting our error shape."""

    ERROR_SCHEMA = ErrorSchema


API_SETTINGS = {
    "API_TITLE": "VoiceForge",
    "API_VERSION": "1.0",
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": "/api",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "docs",
    "OPENAPI_SWAGGER_UI_URL": "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/",
}


def register_api(app: Flask) -> VoiceForgeApi:
    """Create the OpenAPI-documented API and mount every blueprint."""
    from voiceforge.api import health, training, tts, voices

    for key, value in API_SETTINGS.items():
        app.config.setdefault(key, value)
    api = VoiceForgeApi(app)
    for module in (health, voices, tts, training):
        api.register_blueprint(module.blp)
    return api
