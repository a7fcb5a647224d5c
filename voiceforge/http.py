"""Cross-cutting HTTP concerns: body limits, request ids, the one-line access log and request metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from voiceforge import logs, metrics
from voiceforge.errors import PayloadTooLarge

access_log = logging.getLogger("voiceforge.access")
REQUEST_ID_HEADER = "X-Request-ID"
SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def register_body_limit(app: Flask) -> None:
    """413 for streamed (chunked) bodies over MAX_CONTENT_LENGTH too.

    Werkzeug rejects a declared Content-Length over the limit itself, but silently truncates a
    body without one at the limit, which would surface as a confusing "invalid JSON" 400.
    """

    @app.before_request
    def _limit_streamed_body() -> None:
        limit = app.config.get("MAX_CONTENT_LENGTH")
        if limit and request.content_length is None and request.method in ("POST", "PUT", "PATCH"):
            # Werkzeug stops reading at the limit: one byte more from the connection tells a body of
            # exactly the limit (allowed, as with a Content-Length) from a longer one.
            if len(request.get_data(cache=True)) >= limit and request.environ["wsgi.input"].read(1):
                raise PayloadTooLarge(f"Request body is larger than {limit} bytes.")

    @app.after_request
    def _drain_unread_body(response: Response) -> Response:
        # A request answered before its body was read (401, 404, 415…) leaves the body on the
        # socket; gunicorn discards only 64 KiB of it and then drops the keep-alive connection it
        # promised. Reading the rest (never more than the body limit) keeps the connection usable.
        limit = app.config.get("MAX_CONTENT_LENGTH")
        length = request.content_length
        if not length or (limit and length > limit):
            return response  # nothing to read, or too much: let the server close the connection
        if response.status_code == 401:
            # A caller without a key is answered at once, not after its body (which it may never send
            # in full); gunicorn then discards what it can and closes the connection.
            return response
        try:
            exhaust = getattr(request.stream, "exhaust", None)
            if exhaust:
                exhaust()
        except (OSError, HTTPException):
            pass  # the client went away: nothing left to keep open
        return response


def register_request_logging(app: Flask) -> None:
    """Give every request an id (echoed in X-Request-ID) and log one line: never the body."""
    @app.before_request
    def _start() -> None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        g.started = time.perf_counter()
        # Every log line of this request (JSON format) carries these; services add voice id and chars.
        logs.reset_context(request_id=g.request_id, method=request.method, route=_route())

    @app.after_request
    def _finish(response: Response) -> Response:
        request_id = g.get("request_id") or uuid.uuid4().hex
        response.headers[REQUEST_ID_HEADER] = request_id
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        route = _route()
        metrics.record_request(request.method, route, response.status_code, elapsed)
        # A streamed body's length is unknown until it is sent; asking would buffer it.
        size = None if response.is_streamed else response.calculate_content_length()
        fields = {"request_id": request_id, "method": request.method, "route": route,
                  "status": response.status_code, "duration_ms": round(elapsed * 1000, 1), "bytes": size,
                  "voice_id": _voice_id()}
        access_log.info("method=%s route=%s status=%s latency_ms=%.1f request_id=%s bytes=%s",
                        request.method, route, response.status_code, elapsed * 1000, request_id, size,
                        extra=fields)
        return response


def _route() -> str:
    """The URL rule (/api/voices/<voice_id>), not the path: bounded for metrics, no ids in it."""
    return request.url_rule.rule if request.url_rule else metrics.UNMATCHED_ROUTE


def _voice_id() -> str | None:
    """The voice a request spoke with or addressed (a URL's id may be any hostile string: kept short)."""
    voice_id = logs.context().get("voice_id") or (request.view_args or {}).get("voice_id")
    return str(voice_id)[:100] if voice_id else None
