"""VoiceForge: text-to-speech and voice cloning with Coqui XTTS-v2 behind a small Flask API."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask

if TYPE_CHECKING:
    from voiceforge.services.engine import Engine


def create_app(config: Mapping[str, Any] | None = None, instance_path: str | None = None, *,
               engine: Engine | None = None) -> Flask:
    """Application factory: config -> settings -> logging -> runtime -> http -> db -> api -> errors -> cli.

    A bad setting raises ConfigError (one line naming the variable, the value and what is allowed)
    before anything starts. `engine` shares an engine already built for the same settings (tests).
    The console (a page at `/`, voiceforge/console/) is mounted beside the API.
    Nothing heavy happens here: torch is imported and the model loaded on first use only.
    """
    from voiceforge.api import register_api
    from voiceforge.cli import register_cli
    from voiceforge.config import ConfigError, load_config
    from voiceforge.console import register_console
    from voiceforge.db import register_db
    from voiceforge.errors import register_error_handlers
    from voiceforge.http import register_body_limit, register_request_logging
    from voiceforge.logs import configure_logging
    from voiceforge.metrics import register_metrics
    from voiceforge.runtime import register_runtime
    from voiceforge.settings import Settings

    instance = instance_path or os.environ.get("VOICEFORGE_INSTANCE_PATH") or None
    # Flask wants an absolute path; a relative one means the working directory's, as anywhere else.
    app = Flask(__name__, instance_relative_config=True, instance_path=instance and os.path.abspath(instance))
    try:
        Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError("INSTANCE_PATH", app.instance_path,
                          f"a directory this user can create ({error.strerror or error}).") from error
    load_config(app, config)
    settings = Settings.from_config(app.config)
    configure_logging(settings.log_level, settings.log_format)
    register_runtime(app, settings, engine)
    register_request_logging(app)
    register_db(app)
    register_api(app)  # its key check runs before the body limit reads a streamed body into memory
    register_body_limit(app)
    register_console(app)
    register_metrics(app)
    register_error_handlers(app)
    register_cli(app)
    if settings.job_backend == "celery":
        from voiceforge.jobs.celery_backend import celery_init_app

        celery_init_app(app)  # app.extensions["celery"]: dispatch() sends each job's task with it
    return app
