"""API keys: loading them, reading what a client presents, and constant-time checking."""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Any

from flask import Request

from voiceforge.config import ConfigError
from voiceforge.errors import Unauthorized

HOW_TO_SEND = "A valid API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`."

log = logging.getLogger(__name__)

# The keys gunicorn's master last read whole (at start, then at each reload that could read them),
# which the workers it forks inherit. A worker that cannot read usable keys as it boots (the key file
# half rewritten or emptied by mistake at a SIGHUP, or when a crashed worker is replaced) serves with
# these and logs why: failing to boot would stop gunicorn, and every request with it. Outside gunicorn
# (flask run, the CLI) there are none, and unusable keys refuse to start as before.
_keys_from_master: list[bytes] | None = None
_fell_back = False  # this process has logged its fallback once


def remember_keys_for_workers(config: Any) -> None:
    """In gunicorn's master: read the keys now, for the workers it forks to fall back on (ConfigError if
    they are unusable, and the keys read before stay)."""
    global _keys_from_master
    _keys_from_master = _read_keys(config)


def load_api_keys(config: Any) -> list[bytes]:
    """Keys from VOICEFORGE_API_KEYS and, one per line (# comments allowed), VOICEFORGE_API_KEYS_FILE.

    An empty list means keys are off, so a setting that is there but yields no key (an empty secret
    mount, a file of comments only) is a ConfigError: it must never open the service. Every caller reads
    the file itself (each gunicorn worker when it boots, which is how a SIGHUP rotates keys), so each one
    fails closed; a gunicorn worker falls back to its master's last keys instead. Keys are never shown.
    """
    global _fell_back
    try:
        return _read_keys(config)
    except ConfigError as error:
        if _keys_from_master is None:
            raise
        if not _fell_back:
            log.error("%s; this worker serves with the keys gunicorn's master read last (at start or at the "
                      "last reload that could read them)", error.message.rstrip("."))
            _fell_back = True
        return list(_keys_from_master)


def _read_keys(config: Any) -> list[bytes]:
    listed = config.get("API_KEYS") or []
    if not isinstance(listed, list | tuple) or not all(isinstance(key, str) for key in listed):
        # A string here would be taken letter by letter: any one letter would be a key.
        raise ConfigError("API_KEYS", "…", "a list of keys: API_KEYS = [\"key-1\", \"key-2\"] in "
                          "instance/config.py, comma-separated in the environment.")
    keys = [key.strip() for key in listed if key.strip()]
    if listed and not keys:
        raise ConfigError("API_KEYS", "…", "at least one key: these are all blank, which would turn keys "
                          "off (unset it for no keys).")
    for number, key in enumerate(keys, 1):
        _check_sendable("API_KEYS", "…", key, f"key {number}")
    if config.get("API_KEYS_FILE"):
        keys += _read_key_file(config["API_KEYS_FILE"])
    return [key.encode() for key in keys]


def _read_key_file(path: str) -> list[str]:
    try:
        # utf-8-sig: a file saved with a BOM (Windows Notepad) would otherwise lose its first key.
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise ConfigError("API_KEYS_FILE", path, "a UTF-8 text file of API keys, one per line "
                          "(this one is not UTF-8: UTF-16, as PowerShell writes, is not read).") from None
    except OSError:
        raise ConfigError("API_KEYS_FILE", path, "a readable file of API keys, one per line.") from None
    numbered = [(number, line.strip()) for number, line in enumerate(lines, 1)
                if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise ConfigError("API_KEYS_FILE", path, "a file holding at least one API key, one per line; this "
                          "one holds none, which would turn keys off (unset it for no keys).")
    for number, key in numbered:
        _check_sendable("API_KEYS_FILE", path, key, f"the key on line {number}")
    return [key for _, key in numbered]


def _check_sendable(setting: str, shown: str, key: str, which: str) -> None:
    """Refuse a key no client could present: a header value reaches us as latin-1, so only printable ASCII
    can ever match; a key with anything else (é, a control character, a UTF-16 NUL) would be dead."""
    if not all(" " <= char <= "~" for char in key):
        raise ConfigError(setting, shown, f"keys of printable ASCII characters only; {which} holds another "
                          "character, which no HTTP header can carry so that it matches.")


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
