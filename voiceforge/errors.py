"""Domain errors and the one place that turns every error into a JSON response."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class VoiceForgeError(Exception):
    """A failure the client should hear about: carries an HTTP status and a human-readable detail."""

    status = 400
    code = "bad_request"

    def __init__(self, detail: str, *, extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}
        self.headers = headers or {}


class BadRequest(VoiceForgeError):
    """The request or its data URI is malformed."""


class Unauthorized(VoiceForgeError):
    status, code = 401, "unauthorized"


class NotFound(VoiceForgeError):
    status, code = 404, "not_found"


class Conflict(VoiceForgeError):
    """The resource exists but is not in a state that allows the operation (e.g. voice not ready)."""

    status, code = 409, "conflict"


class PayloadTooLarge(VoiceForgeError):
    status, code = 413, "payload_too_large"


class UnsupportedMedia(VoiceForgeError):
    """The upload is not audio, or not a format we can decode."""

    status, code = 415, "unsupported_media"


class Unprocessable(VoiceForgeError):
    """Well-formed input whose values are out of range or unusable (too short, silent, unknown language)."""

    status, code = 422, "unprocessable"


class ServiceUnavailable(VoiceForgeError):
    """The model or a resource is unavailable; `detail` says why and how to fix it."""

    status, code = 503, "unavailable"


class Busy(ServiceUnavailable):
    """Temporarily overloaded (queue full, database locked): retry later."""

    code = "busy"

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class InsufficientStorage(VoiceForgeError):
    status, code = 507, "insufficient_storage"


def error_response(status: int, detail: str, code: str, *, extra: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    """Build the JSON error body every failure shares: `detail`, a stable `code`, and extras."""
    body: dict[str, Any] = {"detail": detail, "code": code, **(extra or {})}
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def respond(status: int, detail: str, code: str, *, extra: dict[str, Any] | None = None,
            headers: dict[str, str] | None = None) -> Response:
    """The error in the format of the request's API family; the service's own shape by default."""
    from voiceforge.families import family_of  # families -> auth -> errors: imported late

    family = family_of(request)
    if family is not None and family.error_format is not None:
        return family.error_format(status, detail, code, extra or {}, headers or {})
    return error_response(status, detail, code, extra=extra, headers=headers)


def register_error_handlers(app: Flask) -> None:
    """Map domain errors, HTTP errors and anything unexpected onto JSON responses."""

    @app.errorhandler(VoiceForgeError)
    def _domain(error: VoiceForgeError) -> Response:
        return respond(error.status, error.detail, error.code, extra=error.extra,
                              headers=error.headers)

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        return http_error_response(error)

    @app.errorhandler(OperationalError)
    def _database(error: OperationalError) -> Response:
        # SQLite answers "database is locked" once busy_timeout has passed; a full disk refuses the
        # write (retrying will not help); other errors mean the database is unreachable. All are
        # the server's state, not the client's fault.
        log.warning("database error on %s %s: %s", request.method, request.path, error.orig)
        reason = str(error.orig).lower()
        if "disk is full" in reason or "no space left" in reason:  # SQLite's SQLITE_FULL, PostgreSQL's
            return respond(507, "The server's disk is full; nothing was saved.", "insufficient_storage")
        if "locked" in reason or "busy" in reason:
            return respond(503, "The database is busy; retry shortly.", "busy",
                                  headers={"Retry-After": "2"})
        return respond(503, "The database is unavailable; retry later.", "database_unavailable",
                              headers={"Retry-After": "5"})

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return respond(500, "Internal server error; the incident was logged.", "internal")


HTTP_DETAILS = {
    404: "No such endpoint.",
    405: "Method not allowed for this endpoint.",
    413: "Request body too large.",
}


# One code per status, whoever raised it: werkzeug's names (request_entity_too_large, unprocessable_entity…)
# for what it or the schemas refuse, ours for what the services refuse. Statuses without a class of ours
# (405 method_not_allowed) keep werkzeug's name.
_CODES = {cls.status: cls.code for cls in (BadRequest, Unauthorized, NotFound, Conflict, PayloadTooLarge,
                                            UnsupportedMedia, Unprocessable, ServiceUnavailable,
                                            InsufficientStorage)}


def http_error_response(error: HTTPException) -> Response:
    """JSON for werkzeug/flask-smorest HTTP errors, keeping field messages from schema validation."""
    status = error.code or 500
    extra: dict[str, Any] = {}
    messages = getattr(error, "data", {}).get("messages") if hasattr(error, "data") else None
    if messages:
        extra["errors"] = messages
    detail = HTTP_DETAILS.get(status) or error.description or error.name
    if messages:
        detail = summarise_messages(messages) or detail
    headers = dict(error.get_response().headers) if status == 405 else {}
    allow = {"Allow": headers["Allow"]} if "Allow" in headers else None
    code = _CODES.get(status, error.name.lower().replace(" ", "_"))
    return respond(status, detail, code, extra=extra, headers=allow)


def summarise_messages(messages: Any, prefix: str = "") -> str:
    """Flatten webargs/marshmallow messages ({location: {field: [msg]}}) into one readable line."""
    parts: list[str] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = key if key not in ("json", "_schema", "query", "form", "files") else ""
            inner = f"{prefix}.{name}" if prefix and name else (name or prefix)
            text = summarise_messages(value, inner)
            if text:
                parts.append(text)
    elif isinstance(messages, list | tuple):
        texts = [summarise_messages(m, prefix) for m in messages]
        return "; ".join(t for t in texts if t)
    else:
        return f"{prefix}: {messages}" if prefix else str(messages)
    return "; ".join(parts)
