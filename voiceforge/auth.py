"""API keys: loading them, reading what a client presents, and constant-time checking."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from flask import Request

from voiceforge.errors import Unauthorized

HOW_TO_SEND = "A valid API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`."


def load_api_keys(config: Any) -> list[bytes]:
    """Keys from VOICEFORGE_API_KEYS and, one per line (# comments allowed), VOICEFORGE_API_KEYS_FILE."""
    keys = list(config.get("API_KEYS") or [])
    if config.get("API_KEYS_FILE"):
        lines = Path(config["API_KEYS_FILE"]).read_text(encoding="utf-8").splitlines()
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [key.encode() for key in keys if key]


def presented_credentials(request: Request) -> list[str | None]:
    """Every credential the client sent; None stands for an Authorization header we cannot accept.

    `Authorization: Bearer <key>` and `X-API-Key: <key>` are keys; any other Authorization scheme
    (Basic, an empty Bearer) is a credential that can never be valid.
    """
    credentials: list[str | None] = []
    if "Authorization" in request.headers:
        scheme, _, token = request.headers["Authorization"].partition(" ")
        credentials.append(token.strip() if scheme.lower() == "bearer" and token.strip() else None)
    if "X-API-Key" in request.headers:
        credentials.append(request.headers["X-API-Key"] or None)
    return credentials


def key_matches(candidate: str, keys: list[bytes]) -> bool:
    """Constant-time comparison against every key (no early exit that would leak which one)."""
    encoded = candidate.encode("utf-8", "surrogateescape")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(encoded, key)
    return matched


def require_key(request: Request, keys: list[bytes]) -> None:
    """401 unless the request presents at least one key and every credential it presents is valid."""
    credentials = presented_credentials(request)
    if not credentials or not all(c is not None and key_matches(c, keys) for c in credentials):
        raise Unauthorized(HOW_TO_SEND, headers={"WWW-Authenticate": "Bearer"})
