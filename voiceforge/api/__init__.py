"""The HTTP API: flask-smorest setup (OpenAPI, request parsing) and the per-resource blueprints."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask
from flask_smorest import Api, Blueprint
from marshmallow import Schema, ValidationError, fields
from webargs import core
from webargs.flaskparser import FlaskParser, abort

from voiceforge.errors import UnsupportedMedia
from voiceforge.families import ApiFamily, register_families
from voiceforge.schemas import ErrorSchema

# fetch() with a string body and no header sends text/plain; accept JSON sent that way too.
LENIENT_JSON_TYPES = {"", "text/plain"}


class JsonParser(FlaskParser):
    """webargs parser: 400 for malformed bodies (syntax, types, missing fields), 422 for bad values."""

    def _raw_load_json(self, req: Any) -> Any:
        mimetype = req.mimetype or ""
        if not (req.is_json or mimetype in LENIENT_JSON_TYPES):
            raise UnsupportedMedia(f"Send a JSON body (Content-Type: application/json), not {mimetype!r}.")
        # Parse here rather than through FlaskParser._raw_load_json: that one checks the
        # mimetype again and silently drops text/plain bodies (every field then read as missing).
        try:
            return core.parse_json(req.get_data(cache=True))
        except json.JSONDecodeError:
            raise  # webargs' load_json answers 400 (and reads an empty body as missing fields)
        except RecursionError:
            # `[[[[…` nested thousands deep exhausts the parser's recursion limit: not a 500.
            return _invalid_json("it is nested too deeply")
        except ValueError:
            # Python refuses integer literals over 4300 digits (the CVE-2020-10735 limit).
            return _invalid_json("a number in it is too long")

    def handle_error(self, error: ValidationError, req: Any, schema: Schema, *,
                     error_status_code: int | None, error_headers: dict | None) -> None:
        status = error_status_code or (400 if is_structural(error, schema) else 422)
        abort(status, exc=error, messages=error.messages, schema=schema, headers=error_headers)


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
            if any(message in _structural_messages(field) for message in _flatten(field_messages)):
                return True
    return False


def _structural_messages(field: fields.Field) -> set[str]:
    """What a field, and whatever it nests (a list's items, a nested object's fields), says about a
    wrong type, a missing value or a null: `samples: ["x"]` is as malformed as `samples: "x"`."""
    messages = set(field.error_messages.values())
    if isinstance(field, fields.List):
        messages |= _structural_messages(field.inner)
    if isinstance(field, fields.Nested) and isinstance(field.schema, Schema):
        messages |= set(field.schema.error_messages.values())
        for nested in field.schema.fields.values():
            messages |= _structural_messages(nested)
    return messages


def _flatten(messages: Any) -> list[str]:
    if isinstance(messages, dict):
        return [m for value in messages.values() for m in _flatten(value)]
    if isinstance(messages, list | tuple):
        return [m for value in messages for m in _flatten(value)]
    return [str(messages)]


def _invalid_json(reason: str) -> Any:
    abort(400, messages={"json": [f"Invalid JSON body: {reason}."]})


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
    # Served by voiceforge/console/swagger_ui.py from the swagger-ui-bundle package: no CDN, works offline.
    "OPENAPI_SWAGGER_UI_URL": "/swagger-ui/",
}


# How a client presents a key (voiceforge/auth.py); documented when keys are configured.
SECURITY_SCHEMES = {
    "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "BearerKey": {"type": "http", "scheme": "bearer"},
}


def register_api(app: Flask) -> VoiceForgeApi:
    """Create the OpenAPI-documented API and the OpenAI-compatible /v1, their families, and mount both."""
    from voiceforge import openai
    from voiceforge.api import health, jobs, training, tts, voices

    for key, value in API_SETTINGS.items():
        app.config.setdefault(key, value)
    family = ApiFamily("voiceforge", "/api", blueprints={m.blp.name for m in (voices, tts, training, jobs)}
                       | {"api-docs"}, public_blueprints={"api-docs"})
    register_families(app, [family, openai.openai_family()])
    # With keys configured every /api operation requires one (the health probes opt out with
    # `security=[]`): the document says so, so clients and fuzzers know to send it.
    requires_key = family.requires_key
    spec_kwargs = {"security": [{name: []} for name in SECURITY_SCHEMES]} if requires_key else {}
    api = VoiceForgeApi(app, spec_kwargs=spec_kwargs)
    if requires_key:
        for name, scheme in SECURITY_SCHEMES.items():
            api.spec.components.security_scheme(name, scheme)
    for module in (health, voices, tts, training, jobs):
        api.register_blueprint(module.blp)
    app.register_blueprint(openai.blp)  # a plain blueprint: not part of /api/openapi.json
    return api
