"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, for the /v1 family."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify

from voiceforge.errors import BadRequest, NotFound


class InvalidRequest(BadRequest):
    """A request parameter OpenAI's API would refuse: 400 naming the parameter in `param`."""

    code = "invalid_value"

    def __init__(self, message: str, *, param: str | None, code: str | None = None) -> None:
        super().__init__(message, extra={"param": param})
        if code:
            self.code = code


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model {model[:80]!r} does not exist.", extra={"param": "model"})


def openai_error(status: int, detail: str, code: str, extra: dict[str, Any],
                 headers: dict[str, str]) -> Response:
    """The family's error format: every domain and HTTP error of a /v1 request comes out here.

    OpenAI types every client error `invalid_request_error` (a bad key too, with code
    `invalid_api_key`) and every server-side one `server_error`; its clients pick the exception
    class from the status alone, so our own stable `code` is kept for everything else.
    """
    if status == 401:
        code = "invalid_api_key"
    error = {
        "message": detail,
        "type": "server_error" if status >= 500 else "invalid_request_error",
        "param": extra.get("param"),
        "code": code,
    }
    response = jsonify({"error": error})
    response.status_code = status
    for name, value in headers.items():  # Retry-After on 503, Allow on 405, WWW-Authenticate on 401
        response.headers[name] = value
    return response
