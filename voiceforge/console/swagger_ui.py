"""Swagger UI's files for `/api/docs`, served from the `swagger-ui-bundle` package instead of a CDN."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, Response, send_from_directory

URL_PREFIX = "/swagger-ui"
# The package's files are named by Swagger UI's version, which the pinned package fixes: clients may
# keep them a day without asking again.
MAX_AGE_SECONDS = 24 * 3600

blp = Blueprint("swagger_ui", __name__, url_prefix=URL_PREFIX)


def assets_dir() -> Path:
    """Where the installed swagger-ui-bundle keeps Swagger UI's dist files."""
    from swagger_ui_bundle import swagger_ui_path  # imported on use: only /api/docs needs it

    return Path(str(swagger_ui_path))


@blp.get("/<path:filename>")
def asset(filename: str) -> Response:
    """One of Swagger UI's files (send_from_directory refuses paths that leave the directory)."""
    return send_from_directory(assets_dir(), filename, max_age=MAX_AGE_SECONDS)


def register_swagger_ui(app: Flask) -> None:
    """Mount the assets where OPENAPI_SWAGGER_UI_URL (voiceforge/api/__init__.py) points."""
    app.register_blueprint(blp)
