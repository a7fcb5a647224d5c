"""API families: a group of blueprints sharing a key policy, a CORS policy and an error format.

`/api` (the web app's contract) is one family; a second API (OpenAI-compatible `/v1`) is another with
its own error shape. A routed request belongs to the family of its blueprint. A request that matches
no route (404, 405) has no blueprint, so it belongs to the family whose URL space it is in, and gets
that family's key check and error format: an unknown `/api/…` path answers 401 without a key, never
revealing which paths exist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Request, Response, current_app, request
from flask_cors import CORS

from voiceforge.auth import load_api_keys, require_key
from voiceforge.http import REQUEST_ID_HEADER

EXTENSION = "voiceforge_families"

# (status, detail, code, extra, headers) -> the response a family's clients expect for an error.
ErrorFormat = Callable[[int, str, str, dict[str, Any], dict[str, str]], Response]


@dataclass
class ApiFamily:
    name: str
    url_prefix: str
    blueprints: set[str] = field(default_factory=set)
    public_blueprints: set[str] = field(default_factory=set)  # open without a key (API documents)
    error_format: ErrorFormat | None = None  # None: the service's own `{"detail", "code"}` shape
    keys: list[bytes] = field(default_factory=list)  # empty: no key needed

    @property
    def requires_key(self) -> bool:
        return bool(self.keys)

    def owns_path(self, path: str) -> bool:
        return path == self.url_prefix or path.startswith(self.url_prefix + "/")

    def authenticate(self, req: Request) -> None:
        """401 unless a valid key is presented (when keys are configured); preflights stay open."""
        if self.keys and req.method != "OPTIONS" and req.blueprint not in self.public_blueprints:
            require_key(req, self.keys)


def register_families(app: Flask, families: list[ApiFamily]) -> None:
    """Give each family the app's keys and CORS origins, and check keys before every request."""
    keys = load_api_keys(app.config)  # the key file is read as each worker starts
    for family in families:
        family.keys = keys
        CORS(app, resources={rf"{family.url_prefix}/.*": {"origins": app.config["CORS_ORIGINS"]}},
             expose_headers=[REQUEST_ID_HEADER, "Retry-After"], max_age=600)
    app.extensions[EXTENSION] = families

    @app.before_request
    def _authenticate() -> None:
        family = family_of(request)
        if family is not None:
            family.authenticate(request)


def family_of(req: Request) -> ApiFamily | None:
    """The family a request belongs to: its blueprint's, or (unrouted) the one whose URL space it is in."""
    families: list[ApiFamily] = current_app.extensions.get(EXTENSION, [])
    if req.blueprint:
        return next((f for f in families if req.blueprint in f.blueprints), None)
    return next((f for f in families if f.owns_path(req.path)), None)
