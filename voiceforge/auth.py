"""Optional API keys: when configured, every /api/* route but the OpenAPI document requires one."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from flask import Flask, request

from voiceforge.errors import Unauthorized

PUBLIC_API_PATHS = ("/api/openapi.json", "/api/docs")


def load_api_keys(config: Any) -> list[bytes]:
    """Keys from VOICEFORGE_API_KEYS and, one per line (# comments allowed), VOICEFORGE_API_KEYS_FILE."""
    keys = list(config.get("API_KEYS") or [])
    if config.get("API_KEYS_FILE"):
        lines = Path(config["API_KEYS_FILE"]).read_text(encoding="utf-8").splitlines()
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [key.encode() for key in keys if key]


def presented_key() -> str | None:
    """The key a client sent: `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key") or None


def key_matches(candidate: str, keys: list[bytes]) -> bool:
    """Constant-time comparison against every key (no early exit that would leak which one)."""
    encoded = candidate.encode("utf-8", "surrogateescape")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(encoded, key)
    return matched


def register_auth(app: Flask) -> None:
    """Require a key on /api/* when keys are configured; health probes and CORS preflight stay open."""
    keys = load_api_keys(app.config)
    # register_api reads this to document the security schemes (the key file is read once).
    app.extensions["voiceforge_api_keys_required"] = bool(keys)
    if not keys:
        return

    @app.before_request
    def _require_api_key() -> None:
        if request.method == "OPTIONS" or not request.path.startswith("/api/"):
            return
        if request.path.startswith(PUBLIC_API_PATHS):
            return
        candidate = presented_key()
        if candidate is None or not key_matches(candidate, keys):
            raise Unauthorized("A valid API key is required: send `Authorization: Bearer <key>` "
                               "or `X-API-Key: <key>`.", headers={"WWW-Authenticate": "Bearer"})
