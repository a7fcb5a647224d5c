"""VoiceForge: text-to-speech and voice cloning with Coqui XTTS-v2 behind a small Flask API."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask


def create_app(config: Mapping[str, Any] | None = None, instance_path: str | None = None) -> Flask:
    """Application factory: config -> logging -> auth -> db -> cors -> api -> errors -> cli.

    Nothing heavy happens here: torch is imported and the model loaded on first use only.
    """
    from voiceforge.api import register_api
    from voiceforge.auth import register_auth
    from voiceforge.cli import register_cli
    from voiceforge.config import load_config
    from voiceforge.db import register_db
    from voiceforge.errors import register_error_handlers
    from voiceforge.http import register_body_limit, register_cors, register_request_logging

    app = Flask(__name__, instance_relative_config=True,
                instance_path=instance_path or os.environ.get("VOICEFORGE_INSTANCE_PATH") or None)
    load_config(app, config)
    register_request_logging(app)
    register_auth(app)
    register_body_limit(app)
    register_db(app)
    register_cors(app)
    register_api(app)
    register_error_handlers(app)
    register_cli(app)
    return app
